//! The stage graph: one thread per stage, bounded crossbeam channels between stages.
//!
//! Every stage is built before any starts, so set-up errors surface before work begins. A channel
//! counts its producers: when the last [`Output`] of a channel is dropped (its stage returned), the
//! consumer receives end-of-stream after the items already queued, so no wiring counts or forwards
//! end marks. When the last producer to go panicked, the channel ends without end-of-stream (the
//! consumer sees [`Received::Disconnected`]); one of several that panics leaves the others to end
//! it, and the graph reports the panic. The first error stops the graph: it is stored once, the shared stop
//! flag is raised, sources stop producing and downstream stages drain and exit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};

/// A stage failure, with the stage's name.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: {message}")]
pub struct StageError {
    pub stage: String,
    pub message: String,
}

/// Shared by all stages: the stop flag with its reason, and the first error.
#[derive(Clone, Default)]
pub struct Control {
    stop: Arc<AtomicBool>,
    output_closed: Arc<AtomicBool>,
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

    /// The reader of an output went away (a closed pipe): the run stops, and from here on the
    /// stages only drain what is in flight and write nothing more. Not an error.
    pub fn close_output(&self) {
        self.output_closed.store(true, Ordering::SeqCst);
        self.request_stop();
    }

    /// Whether the run stops because an output closed (see [`close_output`](Self::close_output)).
    pub fn output_closed(&self) -> bool {
        self.output_closed.load(Ordering::SeqCst)
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

/// The producers of a channel, counted: the stream ends when the last one goes.
#[derive(Default)]
struct Producers {
    alive: AtomicUsize,
    /// Set by the last producer to go, unless it panicked: the stream ended cleanly.
    ended: AtomicBool,
}

/// The sending end of a bounded stage channel. Every clone is a producer of its own; the channel's
/// stream ends when the last one is dropped.
pub struct Output<T> {
    name: Arc<str>,
    tx: Sender<T>,
    /// Held only by drop-oldest outputs, to evict the oldest queued item.
    evict: Option<Receiver<T>>,
    producers: Arc<Producers>,
}

// Several workers may feed one channel: each clone counts as a producer.
impl<T> Clone for Output<T> {
    fn clone(&self) -> Self {
        self.producers.alive.fetch_add(1, Ordering::SeqCst);
        Self {
            name: self.name.clone(),
            tx: self.tx.clone(),
            evict: self.evict.clone(),
            producers: self.producers.clone(),
        }
    }
}

impl<T> Drop for Output<T> {
    fn drop(&mut self) {
        // Marked before the sender itself goes: the consumer sees the channel disconnect only
        // after this, and reads the disconnect as end-of-stream. A panic leaves it unmarked.
        if self.producers.alive.fetch_sub(1, Ordering::SeqCst) == 1 && !std::thread::panicking() {
            self.producers.ended.store(true, Ordering::SeqCst);
        }
    }
}

/// The receiving end of a bounded stage channel.
pub struct Input<T> {
    name: Arc<str>,
    rx: Receiver<T>,
    producers: Arc<Producers>,
}

// Several workers may take from one channel (each item goes to one of them; each sees the end).
impl<T> Clone for Input<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            rx: self.rx.clone(),
            producers: self.producers.clone(),
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
    let producers = Arc::new(Producers {
        alive: AtomicUsize::new(1),
        ended: AtomicBool::new(false),
    });
    (
        Output {
            name: name.clone(),
            tx,
            evict,
            producers: producers.clone(),
        },
        Input {
            name,
            rx,
            producers,
        },
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
        let mut packet = item;
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
                            if evict.try_recv().is_ok() {
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

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Adds this input to `select`, for a stage that waits on several channels at once (the
    /// item is then taken with [`try_recv`](Self::try_recv)); the operation's index.
    pub fn register<'a>(&'a self, select: &mut crossbeam_channel::Select<'a>) -> usize {
        select.recv(&self.rx)
    }

    /// Every producer gone and the queue drained: end-of-stream if the last producer went
    /// cleanly, else the producer failed.
    fn gone(&self) -> Received<T> {
        if self.producers.ended.load(Ordering::SeqCst) {
            Received::Eos
        } else {
            Received::Disconnected
        }
    }

    /// An item if one is waiting, without blocking.
    pub fn try_recv(&self) -> Option<Received<T>> {
        match self.rx.try_recv() {
            Ok(t) => Some(Received::Item(t)),
            Err(crossbeam_channel::TryRecvError::Disconnected) => Some(self.gone()),
            Err(crossbeam_channel::TryRecvError::Empty) => None,
        }
    }

    /// The next item, end-of-stream, or `Disconnected` when a producer failed or the graph is
    /// stopping with an error.
    pub fn recv(&self, control: &Control) -> Received<T> {
        loop {
            match self.recv_until(std::time::Instant::now() + POLL, control) {
                Some(received) => return received,
                None => continue,
            }
        }
    }

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
                return self.try_recv();
            }
            match self.rx.recv_timeout((deadline - now).min(POLL)) {
                Ok(t) => return Some(Received::Item(t)),
                Err(RecvTimeoutError::Disconnected) => return Some(self.gone()),
                Err(RecvTimeoutError::Timeout) => {
                    if control.has_error() {
                        return Some(Received::Disconnected);
                    }
                }
            }
        }
    }
}

type StageFn = Box<dyn FnOnce(&Control) -> Result<(), String> + Send>;

/// A set of built stages, started together, and the channels between them.
pub struct Graph {
    control: Control,
    stages: Vec<(String, StageFn)>,
    probes: Vec<QueueProbe>,
}

impl Graph {
    pub fn new(control: Control) -> Self {
        Self {
            control,
            stages: Vec::new(),
            probes: Vec::new(),
        }
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// A channel between two stages of this graph (see [`channel`]); its depth is reported with
    /// the graph's [`probes`](Self::probes).
    pub fn channel<T: Send + 'static>(
        &mut self,
        name: impl Into<Arc<str>>,
        capacity: usize,
        when_full: WhenFull,
    ) -> (Output<T>, Input<T>) {
        let (output, input) = channel(name, capacity, when_full);
        self.probes.push(input.probe());
        (output, input)
    }

    /// How full each channel made with [`channel`](Self::channel) is, for health reports and
    /// metrics (taken once, before the graph runs).
    pub fn take_probes(&mut self) -> Vec<QueueProbe> {
        std::mem::take(&mut self.probes)
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
            // Returning drops the output: that ends the stream.
            Ok(())
        });
        graph.add_stage("double", move |c| {
            loop {
                match mid_in.recv(c) {
                    Received::Item(i) => {
                        mid_out.send(i * 2, c);
                    }
                    Received::Eos => return Ok(()),
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
        drop(out);
        assert!(matches!(input.recv(&control), Received::Eos));
    }

    #[test]
    fn the_stream_ends_after_the_last_producer_and_its_items() {
        let control = Control::new();
        let (first, input) = channel::<u32>("many", 8, WhenFull::Block);
        let second = first.clone();
        let third = second.clone();
        first.send(1, &control);
        drop(first);
        second.send(2, &control);
        drop(second);
        // One producer is left: nothing ends yet.
        assert!(matches!(input.recv(&control), Received::Item(1)));
        assert!(matches!(input.recv(&control), Received::Item(2)));
        assert!(input.try_recv().is_none());
        third.send(3, &control);
        drop(third);
        assert!(matches!(input.recv(&control), Received::Item(3)));
        // The end is said to every receive after it, and to every clone of the input.
        assert!(matches!(input.recv(&control), Received::Eos));
        assert!(matches!(input.try_recv(), Some(Received::Eos)));
        assert!(matches!(input.clone().recv(&control), Received::Eos));
    }

    #[test]
    fn a_producer_that_panics_ends_its_stream_without_end_of_stream() {
        let control = Control::new();
        let (out, input) = channel::<u32>("bad", 2, WhenFull::Block);
        let producer = std::thread::spawn(move || {
            out.send(7, &Control::new());
            panic!("producer failed");
        });
        assert!(producer.join().is_err());
        assert!(matches!(input.recv(&control), Received::Item(7)));
        assert!(matches!(input.recv(&control), Received::Disconnected));
    }

    #[test]
    fn graph_channels_are_probed() {
        let mut graph = Graph::new(Control::new());
        let (out, _input) = graph.channel::<u32>("probed", 4, WhenFull::Block);
        out.send(1, graph.control());
        let probes = graph.take_probes();
        assert_eq!(probes.len(), 1);
        assert_eq!(
            (&*probes[0].name, probes[0].capacity, probes[0].depth()),
            ("probed", 4, 1)
        );
    }
}
