//! The stage graph: one thread per stage, bounded crossbeam channels between stages.
//!
//! Every stage is built before any starts, so set-up errors surface before work begins. End of
//! stream is a message each stage forwards. The first error stops the graph: it is stored once, the
//! shared stop flag is raised, sources stop producing and downstream stages drain and exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};

/// What flows between stages.
#[derive(Debug)]
pub enum Packet<T> {
    Item(T),
    /// No more items will follow.
    Eos,
}

/// A stage failure, with the stage's name.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: {message}")]
pub struct StageError {
    pub stage: String,
    pub message: String,
}

/// Shared by all stages: the stop flag and the first error.
#[derive(Clone, Default)]
pub struct Control {
    stop: Arc<AtomicBool>,
    first_error: Arc<Mutex<Option<StageError>>>,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every stage to stop (sources stop producing; others drain what is in flight).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Records `error` if it is the first, and stops the graph.
    pub fn fail(&self, stage: &str, message: String) {
        if let Ok(mut slot) = self.first_error.lock()
            && slot.is_none()
        {
            *slot = Some(StageError {
                stage: stage.to_string(),
                message,
            });
        }
        self.request_stop();
    }

    pub fn take_error(&self) -> Option<StageError> {
        self.first_error.lock().ok().and_then(|mut e| e.take())
    }

    pub fn has_error(&self) -> bool {
        self.first_error.lock().map(|e| e.is_some()).unwrap_or(true)
    }
}

/// How often blocked sends and receives look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// The sending end of a bounded stage channel.
pub struct Output<T> {
    name: Arc<str>,
    tx: Sender<Packet<T>>,
    /// Held only by drop-oldest outputs, to evict the oldest queued item.
    evict: Option<Receiver<Packet<T>>>,
}

// Several workers may feed one channel (each sends its own end-of-stream).
impl<T> Clone for Output<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            tx: self.tx.clone(),
            evict: self.evict.clone(),
        }
    }
}

/// The receiving end of a bounded stage channel.
pub struct Input<T> {
    name: Arc<str>,
    rx: Receiver<Packet<T>>,
}

// Several workers may take from one channel (each item goes to one of them).
impl<T> Clone for Input<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            rx: self.rx.clone(),
        }
    }
}

/// What a full channel does to the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// The producer waits (files: never lose a frame).
    Block,
    /// The oldest queued item is dropped to make room (live sources: stay current).
    DropOldest,
}

/// A bounded channel of `capacity` packets between two stages.
pub fn channel<T>(
    name: impl Into<Arc<str>>,
    capacity: usize,
    when_full: WhenFull,
) -> (Output<T>, Input<T>) {
    let name = name.into();
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let evict = (when_full == WhenFull::DropOldest).then(|| rx.clone());
    (
        Output {
            name: name.clone(),
            tx,
            evict,
        },
        Input { name, rx },
    )
}

/// The outcome of sending an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Delivered without loss.
    Delivered,
    /// Delivered after evicting this many older items.
    DroppedOldest(u64),
    /// The receiver is gone or the graph is stopping; the item was not delivered.
    Closed,
}

impl<T> Output<T> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends an item according to the channel's full policy. Blocking sends give up when the graph
    /// is asked to stop with an error, so a failed consumer never hangs its producer.
    pub fn send(&self, item: T, control: &Control) -> Sent {
        let mut packet = Packet::Item(item);
        match &self.evict {
            Some(evict) => {
                let mut dropped = 0;
                loop {
                    match self.tx.try_send(packet) {
                        Ok(()) => {
                            return if dropped == 0 {
                                Sent::Delivered
                            } else {
                                Sent::DroppedOldest(dropped)
                            };
                        }
                        Err(TrySendError::Full(p)) => {
                            packet = p;
                            if let Ok(Packet::Item(_)) = evict.try_recv() {
                                dropped += 1;
                            }
                        }
                        Err(TrySendError::Disconnected(_)) => return Sent::Closed,
                    }
                }
            }
            None => loop {
                match self.tx.send_timeout(packet, POLL) {
                    Ok(()) => return Sent::Delivered,
                    Err(SendTimeoutError::Timeout(p)) => {
                        if control.has_error() {
                            return Sent::Closed;
                        }
                        packet = p;
                    }
                    Err(SendTimeoutError::Disconnected(_)) => return Sent::Closed,
                }
            },
        }
    }

    /// Sends end-of-stream (always waits for room: nothing may follow it).
    pub fn send_eos(&self, control: &Control) {
        let mut packet = Packet::Eos;
        loop {
            match self.tx.send_timeout(packet, POLL) {
                Ok(()) | Err(SendTimeoutError::Disconnected(_)) => return,
                Err(SendTimeoutError::Timeout(p)) => {
                    if control.has_error() {
                        return;
                    }
                    packet = p;
                }
            }
        }
    }

    /// Items waiting in the channel.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// What a receive gives back.
#[derive(Debug)]
pub enum Received<T> {
    Item(T),
    Eos,
    /// Upstream went away without end-of-stream (it failed; its error is already recorded).
    Disconnected,
}

/// Reads how full a channel is, for periodic health reports. It holds a receiving end, so a
/// channel with a probe never reports `Sent::Closed`; stages end on end-of-stream or the stop flag.
pub struct QueueProbe {
    pub name: Arc<str>,
    pub capacity: usize,
    depth: Box<dyn Fn() -> usize + Send + Sync>,
}

impl QueueProbe {
    /// Items waiting now.
    pub fn depth(&self) -> usize {
        (self.depth)()
    }
}

impl<T: Send + 'static> Input<T> {
    pub fn probe(&self) -> QueueProbe {
        let rx = self.rx.clone();
        QueueProbe {
            name: self.name.clone(),
            capacity: rx.capacity().unwrap_or(0),
            depth: Box::new(move || rx.len()),
        }
    }
}

impl<T> Input<T> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Nothing waiting now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Adds this input to `select`, for a stage that waits on several channels at once (the
    /// packet is then taken with [`try_recv`](Self::try_recv)); the operation's index.
    pub fn register<'a>(&'a self, select: &mut crossbeam_channel::Select<'a>) -> usize {
        select.recv(&self.rx)
    }

    /// An item if one is waiting, without blocking.
    pub fn try_recv(&self) -> Option<Received<T>> {
        match self.rx.try_recv() {
            Ok(Packet::Item(t)) => Some(Received::Item(t)),
            Ok(Packet::Eos) => Some(Received::Eos),
            Err(crossbeam_channel::TryRecvError::Disconnected) => Some(Received::Disconnected),
            Err(crossbeam_channel::TryRecvError::Empty) => None,
        }
    }

    pub fn recv(&self, control: &Control) -> Received<T> {
        loop {
            match self.rx.recv_timeout(POLL) {
                Ok(Packet::Item(t)) => return Received::Item(t),
                Ok(Packet::Eos) => return Received::Eos,
                Err(RecvTimeoutError::Disconnected) => return Received::Disconnected,
                Err(RecvTimeoutError::Timeout) => {
                    if control.has_error() {
                        return Received::Disconnected;
                    }
                }
            }
        }
    }
}

impl<T> Input<T> {
    /// Like [`recv`](Self::recv), but gives up at `deadline` (`None`): lets a stage gather a
    /// batch for at most a bounded wait.
    pub fn recv_until(
        &self,
        deadline: std::time::Instant,
        control: &Control,
    ) -> Option<Received<T>> {
        loop {
            let now = std::time::Instant::now();
            if now >= deadline {
                return match self.rx.try_recv() {
                    Ok(Packet::Item(t)) => Some(Received::Item(t)),
                    Ok(Packet::Eos) => Some(Received::Eos),
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        Some(Received::Disconnected)
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => None,
                };
            }
            match self.rx.recv_timeout((deadline - now).min(POLL)) {
                Ok(Packet::Item(t)) => return Some(Received::Item(t)),
                Ok(Packet::Eos) => return Some(Received::Eos),
                Err(RecvTimeoutError::Disconnected) => return Some(Received::Disconnected),
                Err(RecvTimeoutError::Timeout) => {
                    if control.has_error() {
                        return Some(Received::Disconnected);
                    }
                }
            }
        }
    }
}

/// Waits up to `timeout` for the first of `inputs` to have something; `(index, what)`.
pub fn recv_any<T>(
    inputs: &[&Input<T>],
    timeout: std::time::Duration,
) -> Option<(usize, Received<T>)> {
    if inputs.is_empty() {
        std::thread::sleep(timeout);
        return None;
    }
    let mut select = crossbeam_channel::Select::new();
    for input in inputs {
        select.recv(&input.rx);
    }
    let op = select.select_timeout(timeout).ok()?;
    let index = op.index();
    let received = match op.recv(&inputs[index].rx) {
        Ok(Packet::Item(t)) => Received::Item(t),
        Ok(Packet::Eos) => Received::Eos,
        Err(_) => Received::Disconnected,
    };
    Some((index, received))
}

type StageFn = Box<dyn FnOnce(&Control) -> Result<(), String> + Send>;

/// A set of built stages, started together.
pub struct Graph {
    control: Control,
    stages: Vec<(String, StageFn)>,
}

impl Graph {
    pub fn new(control: Control) -> Self {
        Self {
            control,
            stages: Vec::new(),
        }
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Adds a built stage; `run` is its whole life on its own thread.
    pub fn add_stage(
        &mut self,
        name: impl Into<String>,
        run: impl FnOnce(&Control) -> Result<(), String> + Send + 'static,
    ) {
        self.stages.push((name.into(), Box::new(run)));
    }

    /// Starts every stage and waits for all of them. Returns the first error, if any.
    pub fn run(self) -> Result<(), StageError> {
        let mut handles: Vec<(String, JoinHandle<()>)> = Vec::new();
        for (name, run) in self.stages {
            let control = self.control.clone();
            let thread_name = name.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ff-{name}"))
                .spawn(move || {
                    tracing::debug!(stage = %thread_name, "stage started");
                    let result =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&control)));
                    match result {
                        Ok(Ok(())) => tracing::debug!(stage = %thread_name, "stage finished"),
                        Ok(Err(message)) => control.fail(&thread_name, message),
                        Err(panic) => {
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "unknown panic".into());
                            control.fail(&thread_name, format!("internal error: {what}"));
                        }
                    }
                });
            match spawned {
                Ok(h) => handles.push((name, h)),
                Err(e) => {
                    self.control
                        .fail(&name, format!("cannot start thread: {e}"));
                    break;
                }
            }
        }
        for (_, h) in handles {
            let _ = h.join();
        }
        match self.control.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_flows_through_every_stage_in_order() {
        let control = Control::new();
        let mut graph = Graph::new(control);
        let (src_out, mid_in) = channel::<u32>("a", 2, WhenFull::Block);
        let (mid_out, sink_in) = channel::<u32>("b", 2, WhenFull::Block);
        let seen = Arc::new(Mutex::new(Vec::new()));
        graph.add_stage("source", move |c| {
            for i in 0..100 {
                src_out.send(i, c);
            }
            src_out.send_eos(c);
            Ok(())
        });
        graph.add_stage("double", move |c| {
            loop {
                match mid_in.recv(c) {
                    Received::Item(i) => {
                        mid_out.send(i * 2, c);
                    }
                    Received::Eos => {
                        mid_out.send_eos(c);
                        return Ok(());
                    }
                    Received::Disconnected => return Err("upstream vanished".into()),
                }
            }
        });
        let sink_seen = seen.clone();
        graph.add_stage("sink", move |c| {
            loop {
                match sink_in.recv(c) {
                    Received::Item(i) => sink_seen.lock().unwrap().push(i),
                    Received::Eos => return Ok(()),
                    Received::Disconnected => return Err("upstream vanished".into()),
                }
            }
        });
        graph.run().unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(*seen, (0..100).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn first_error_is_reported_once_and_stops_a_blocked_producer() {
        let control = Control::new();
        let mut graph = Graph::new(control);
        let (out, input) = channel::<u32>("a", 1, WhenFull::Block);
        graph.add_stage("source", move |c| {
            // Would block forever on a full channel if the failure did not stop it.
            for i in 0.. {
                if out.send(i, c) == Sent::Closed {
                    return Ok(());
                }
            }
            Ok(())
        });
        graph.add_stage("sink", move |c| {
            let _ = input.recv(c);
            Err("disk full".into())
        });
        let err = graph.run().unwrap_err();
        assert_eq!(err.to_string(), "sink: disk full");
    }

    #[test]
    fn panics_become_errors() {
        let mut graph = Graph::new(Control::new());
        graph.add_stage("bad", |_| panic!("boom"));
        let err = graph.run().unwrap_err();
        assert_eq!(err.to_string(), "bad: internal error: boom");
    }

    #[test]
    fn drop_oldest_keeps_newest_and_counts_drops() {
        let control = Control::new();
        let (out, input) = channel::<u32>("live", 2, WhenFull::DropOldest);
        assert_eq!(out.send(1, &control), Sent::Delivered);
        assert_eq!(out.send(2, &control), Sent::Delivered);
        assert_eq!(out.send(3, &control), Sent::DroppedOldest(1));
        assert_eq!(out.send(4, &control), Sent::DroppedOldest(1));
        let mut got = Vec::new();
        for _ in 0..2 {
            if let Received::Item(i) = input.recv(&control) {
                got.push(i);
            }
        }
        assert_eq!(got, vec![3, 4]);
        out.send_eos(&control);
        assert!(matches!(input.recv(&control), Received::Eos));
    }
}
