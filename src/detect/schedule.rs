//! The scheduler: frames from every stream's source queue to the detect workers, each stream in
//! its own order and with its fair share of the workers' time.
//!
//! Fairness is by time, not by frame count: a 4K frame costs a hundred 320×240 ones. Each stream
//! accumulates the worker seconds its frames took (measured by the workers; estimated until they
//! report), and an idle worker takes the waiting frame of the stream that has been served least
//! (start-time fair queueing). A stream that was idle may lead the others by at most
//! [`CREDIT_S`], so a cheap live camera's frame goes ahead of an expensive stream's next frame,
//! while the expensive stream keeps every worker busy that the cheap one does not need.
//!
//! Frames go only to idle workers, so no worker queue ever fills and no decision is made earlier
//! than needed; the scheduler never blocks on a worker. With `detect_every` N > 1 (or auto, by
//! video time) a stream's frames come in runs: the first is searched in full, each of the others
//! follows the faces of the frame before, which the frame carries to whichever worker is free. A
//! run is therefore sequential, but the next run's first frame does not wait for it: runs of one
//! stream overlap on several workers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Select};

use super::Face;
use crate::flow::{Done, Search, StreamWindows, Work, end_mark};
use crate::graph::{Control, Input, Output, Received, Sent};
use crate::sources::{Frame, StreamInfo};

/// The most worker time a stream that was idle may be ahead of those that were busy: enough for
/// a cheap stream's frame to go first, too little for a stream to hoard the workers after a
/// pause.
pub(crate) const CREDIT_S: f64 = 0.25;

/// Before a stream's first frames are measured: seconds per pixel of a full search (about 40 ms
/// for 1080p on one core), and seconds to follow a frame's faces.
const FIRST_GUESS_FULL_S_PER_PIXEL: f64 = 20e-9;
const FIRST_GUESS_FOLLOW_S: f64 = 0.001;

/// Weight of the newest measurement in a stream's running cost estimates.
const COST_SMOOTHING: f64 = 0.3;

/// How long the scheduler sleeps at most before it looks at the stop flag again.
const POLL: Duration = Duration::from_millis(50);

/// The scheduler's inputs and outputs; see the module documentation.
pub(crate) struct Scheduler {
    /// One source queue per stream.
    pub(crate) inputs: Vec<Input<Frame>>,
    pub(crate) streams: Vec<Arc<StreamInfo>>,
    /// One queue per detect worker; each holds at most one frame and the end marks of streams.
    pub(crate) outs: Vec<Output<Work>>,
    /// The workers' reports of frames done.
    pub(crate) done: Receiver<Done>,
    pub(crate) windows: Arc<StreamWindows>,
    pub(crate) detect_every: u32,
    /// Tell scene cuts (see [`super::cut`]).
    pub(crate) scene_cuts: bool,
}

/// A frame taken from its source queue, not yet handed to a worker.
struct Waiting {
    seq: u64,
    frame: Frame,
    /// Searched in full; otherwise follows the frame `seq - 1`.
    keyframe: bool,
}

/// A running estimate of seconds per frame.
#[derive(Clone, Copy)]
struct Cost {
    seconds: f64,
    measured: bool,
}

impl Cost {
    fn guess(seconds: f64) -> Self {
        Self {
            seconds,
            measured: false,
        }
    }

    fn observe(&mut self, seconds: f64) {
        self.seconds = if self.measured {
            self.seconds + COST_SMOOTHING * (seconds - self.seconds)
        } else {
            seconds
        };
        self.measured = true;
    }
}

/// One stream's place in the schedule.
struct StreamState {
    /// The source queue has not ended.
    open: bool,
    end_sent: bool,
    waiting: VecDeque<Waiting>,
    next_seq: u64,
    /// Frames handed to workers and not reported done.
    in_work: usize,
    /// The run being taken: frames in it so far (0: the next frame starts one), the time of its
    /// keyframe, the last frame's index.
    run_frames: u32,
    run_keyframe_pts_ms: f64,
    last_index: Option<u64>,
    /// Faces of frames done, by sequence number, kept while the frame after them may follow them.
    faces_done: BTreeMap<u64, Vec<Face>>,
    /// The last frame's thumbnail, to tell a scene cut ([`super::cut`]), when they are told.
    thumbnail: Option<super::cut::Thumbnail>,
    scene_cuts: bool,
    /// Bytes of the stream's frames, as its window was sized for.
    frame_bytes: usize,
    /// Worker seconds served so far (the stream's virtual time).
    served_s: f64,
    full_cost: Cost,
    follow_cost: Cost,
}

impl StreamState {
    fn new() -> Self {
        Self {
            open: true,
            end_sent: false,
            waiting: VecDeque::new(),
            next_seq: 0,
            in_work: 0,
            run_frames: 0,
            run_keyframe_pts_ms: 0.0,
            last_index: None,
            faces_done: BTreeMap::new(),
            thumbnail: None,
            scene_cuts: true,
            frame_bytes: 0,
            served_s: 0.0,
            full_cost: Cost::guess(0.0),
            follow_cost: Cost::guess(FIRST_GUESS_FOLLOW_S),
        }
    }

    /// Waiting frames or frames in work: the stream competes for the workers.
    fn busy(&self) -> bool {
        !self.waiting.is_empty() || self.in_work > 0
    }

    /// The first waiting frame a worker can take now: a keyframe, or a frame whose frame before
    /// is done (its faces are known).
    fn ready(&self) -> Option<usize> {
        self.waiting
            .iter()
            .position(|w| w.keyframe || self.faces_done.contains_key(&(w.seq.wrapping_sub(1))))
    }

    fn estimate(&self, keyframe: bool) -> f64 {
        if keyframe {
            self.full_cost.seconds
        } else {
            self.follow_cost.seconds
        }
    }
}

/// The scheduler's state while it runs.
struct Schedule<'a> {
    s: &'a Scheduler,
    streams: Vec<StreamState>,
    /// Per worker: items handed to it and not reported done.
    outstanding: Vec<usize>,
    /// Where the search for the least served stream starts among equals, so ties take turns.
    turn: usize,
    /// The virtual clock: the most served time of a stream at the moment it was picked. A stream
    /// back from idle starts no further back than `clock_s - CREDIT_S`, whoever else is busy.
    clock_s: f64,
}

impl Scheduler {
    pub(crate) fn run(self, control: &Control) -> Result<(), String> {
        let result = Schedule {
            s: &self,
            streams: self
                .streams
                .iter()
                .map(|_| StreamState {
                    scene_cuts: self.scene_cuts,
                    ..StreamState::new()
                })
                .collect(),
            outstanding: vec![0; self.outs.len()],
            turn: 0,
            clock_s: 0.0,
        }
        .run(control);
        // Returning drops the workers' queues: each worker's stream ends after its last item.
        result
    }
}

impl Schedule<'_> {
    fn run(&mut self, control: &Control) -> Result<(), String> {
        if self.s.outs.is_empty() {
            return Ok(());
        }
        loop {
            if control.has_error() {
                return Ok(());
            }
            loop {
                match self.s.done.try_recv() {
                    Ok(done) => self.finished(done),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    // Every worker has gone (they failed or their output closed).
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return Ok(()),
                }
            }
            self.take_frames();
            if !self.hand_out(control) {
                return Ok(());
            }
            if self.streams.iter().all(|st| st.end_sent) {
                return Ok(());
            }
            self.wait();
        }
    }

    /// Takes frames from every source queue into the streams' waiting lists, as far as each
    /// stream's window allows.
    fn take_frames(&mut self) {
        let mut held = false;
        for (i, input) in self.s.inputs.iter().enumerate() {
            loop {
                let st = &mut self.streams[i];
                if !st.open {
                    break;
                }
                if !self.s.windows.has_room(i) {
                    // Held with nothing left for the workers: its frames downstream (a batch being
                    // gathered) are what it waits for.
                    held |= !input.is_empty() && st.waiting.is_empty();
                    break;
                }
                match input.try_recv() {
                    Some(Received::Item(frame)) => {
                        if !st.busy() {
                            // Back from idle: no credit banked beyond CREDIT_S.
                            st.served_s = st.served_s.max(self.clock_s - CREDIT_S);
                        }
                        if frame.rgb.len() != st.frame_bytes {
                            // The first frame, or a camera back at another size.
                            st.frame_bytes = frame.rgb.len();
                            self.s.windows.fit(i, st.frame_bytes);
                        }
                        self.s.windows.take(i);
                        take(st, frame, self.s.detect_every);
                    }
                    Some(Received::Eos | Received::Disconnected) => st.open = false,
                    None => break,
                }
            }
        }
        self.s.windows.set_waiting(held);
    }

    /// Hands ready frames to idle workers, least served stream first, and end marks to any
    /// worker. False when the workers are gone.
    fn hand_out(&mut self, control: &Control) -> bool {
        while let Some(worker) = self.outstanding.iter().position(|&n| n == 0) {
            let n = self.streams.len();
            let pick = (0..n)
                .map(|k| (self.turn + k) % n)
                .filter_map(|i| self.streams[i].ready().map(|at| (i, at)))
                .min_by(|a, b| {
                    self.streams[a.0]
                        .served_s
                        .total_cmp(&self.streams[b.0].served_s)
                });
            let Some((i, at)) = pick else { break };
            self.turn = (i + 1) % n;
            let st = &mut self.streams[i];
            self.clock_s = self.clock_s.max(st.served_s);
            let Some(w) = st.waiting.remove(at) else {
                break;
            };
            let search = if w.keyframe {
                Search::Full
            } else {
                Search::Follow(st.faces_done.remove(&(w.seq - 1)).unwrap_or_default())
            };
            if st.full_cost.seconds == 0.0 {
                st.full_cost = Cost::guess(
                    FIRST_GUESS_FULL_S_PER_PIXEL
                        * f64::from(w.frame.width)
                        * f64::from(w.frame.height),
                );
            }
            let estimated_s = st.estimate(w.keyframe);
            st.served_s += estimated_s;
            st.in_work += 1;
            let work = Work {
                seq: w.seq,
                frame: w.frame,
                search,
                estimated_s,
            };
            if !self.send(worker, work, control) {
                return false;
            }
        }
        // End marks: after each ended stream's last frame, to the least busy worker (they cost
        // nothing; the track stage puts them in their place).
        for i in 0..self.streams.len() {
            let st = &mut self.streams[i];
            if st.open || st.end_sent || !st.waiting.is_empty() {
                continue;
            }
            st.end_sent = true;
            st.faces_done.clear();
            let seq = st.next_seq;
            st.next_seq += 1;
            self.s.windows.take(i);
            let work = Work {
                seq,
                frame: end_mark(&self.s.streams[i]),
                search: Search::EndMark,
                estimated_s: 0.0,
            };
            let worker = (0..self.outstanding.len())
                .min_by_key(|&w| self.outstanding[w])
                .unwrap_or(0);
            if !self.send(worker, work, control) {
                return false;
            }
        }
        true
    }

    fn send(&mut self, worker: usize, work: Work, control: &Control) -> bool {
        self.outstanding[worker] += 1;
        // Never blocks: a worker's queue has room for one frame and every stream's end mark.
        self.s.outs[worker].send(work, control) != Sent::Closed
    }

    /// A worker reports a frame done: its time is charged to its stream, its faces kept for the
    /// frame that follows them.
    fn finished(&mut self, done: Done) {
        if let Some(n) = self.outstanding.get_mut(done.worker) {
            *n = n.saturating_sub(1);
        }
        let Some(st) = self.streams.get_mut(done.stream) else {
            return;
        };
        let Some(full) = done.full else {
            return; // an end mark
        };
        st.in_work = st.in_work.saturating_sub(1);
        st.served_s += done.cost_s - done.estimated_s;
        if full {
            st.full_cost.observe(done.cost_s);
        } else {
            st.follow_cost.observe(done.cost_s);
        }
        // Kept only if the next frame may follow it: not taken yet, or taken as a follower.
        let next = done.seq + 1;
        let wanted = next >= st.next_seq || st.waiting.iter().any(|w| w.seq == next && !w.keyframe);
        if wanted && !st.end_sent {
            st.faces_done.insert(done.seq, done.faces);
        }
    }

    /// Sleeps until a worker reports, room is made in a window, or a frame arrives where there is
    /// room for it (or [`POLL`] passes).
    fn wait(&self) {
        let mut select = Select::new();
        select.recv(&self.s.done);
        select.recv(self.s.windows.woken());
        for (i, input) in self.s.inputs.iter().enumerate() {
            if self.streams[i].open && self.s.windows.has_room(i) {
                input.register(&mut select);
            }
        }
        let _ = select.ready_timeout(POLL);
        // The wake-up itself carries nothing: drop it so the next wait sleeps.
        let _ = self.s.windows.woken().try_recv();
    }
}

/// Takes `frame` into its stream's waiting list, numbered, and decides whether it starts a run:
/// the first frame, a run full (`detect_every` frames, or with 0 [`super::AUTO_DETECT_INTERVAL_MS`]
/// of video), or a frame after a gap (frames dropped behind a live source, or lost while a camera
/// reconnected: the faces of the frame before may be far away), or a scene cut (marked on the
/// frame: the faces of the frame before belong to another shot).
fn take(st: &mut StreamState, mut frame: Frame, detect_every: u32) {
    let follows_last = st.last_index.is_some_and(|last| frame.index == last + 1);
    let thumbnail = st
        .scene_cuts
        .then(|| super::cut::Thumbnail::of(&frame.rgb, frame.width as usize, frame.height as usize))
        .flatten();
    frame.scene_cut = matches!((&thumbnail, &st.thumbnail), (Some(now), Some(before)) if now.is_cut_after(before));
    st.thumbnail = thumbnail;
    let run_done = match detect_every {
        // Auto: by video time (a little early rather than a frame late: frame times are rounded).
        0 => {
            st.run_frames >= super::AUTO_MAX_RUN
                || frame.pts_ms - st.run_keyframe_pts_ms >= super::AUTO_DETECT_INTERVAL_MS - 2.0
        }
        n => st.run_frames >= n,
    };
    let keyframe = st.run_frames == 0
        || run_done
        || !follows_last
        || frame.gap_before_ms.is_some()
        || frame.scene_cut;
    if keyframe {
        st.run_frames = 0;
        st.run_keyframe_pts_ms = frame.pts_ms;
        // Nothing will follow the frame before.
        if let Some(before) = st.next_seq.checked_sub(1) {
            st.faces_done.remove(&before);
        }
    }
    st.run_frames += 1;
    st.last_index = Some(frame.index);
    let seq = st.next_seq;
    st.next_seq += 1;
    st.waiting.push_back(Waiting {
        seq,
        frame,
        keyframe,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Control;

    fn frame(index: u64, pts_ms: f64) -> Frame {
        Frame {
            stream: Arc::new(StreamInfo {
                id: "0".into(),
                index: 0,
                uri: "testsrc://".into(),
                live: false,
            }),
            index,
            pts_ms,
            width: 64,
            height: 48,
            rgb: Vec::new(),
            gap_before_ms: None,
            scene_cut: false,
        }
    }

    fn keyframes(st: &StreamState) -> Vec<u64> {
        st.waiting
            .iter()
            .filter(|w| w.keyframe)
            .map(|w| w.frame.index)
            .collect()
    }

    #[test]
    fn runs_of_n_start_with_a_keyframe_and_restart_after_a_gap() {
        let mut st = StreamState::new();
        for i in 0..7 {
            take(&mut st, frame(i, i as f64 * 40.0), 3);
        }
        // Frame 8 after a dropped frame 7.
        take(&mut st, frame(8, 320.0), 3);
        assert_eq!(keyframes(&st), vec![0, 3, 6, 8]);
        let seqs: Vec<u64> = st.waiting.iter().map(|w| w.seq).collect();
        assert_eq!(
            seqs,
            (0..8).collect::<Vec<_>>(),
            "sequence numbers have no gaps"
        );
    }

    /// A frame of another shot is marked a cut and searched in full, mid-run; the frames of one
    /// shot are not.
    #[test]
    fn a_scene_cut_starts_a_run_and_is_marked() {
        // 64×48: the left half bright (shot A) or the right half (shot B).
        let shot = |bright_left: bool, index: u64| {
            let mut f = frame(index, index as f64 * 40.0);
            f.rgb = (0..48 * 64)
                .flat_map(|i| {
                    let left = i % 64 < 32;
                    let v = if left == bright_left { 220 } else { 30 };
                    [v, v, v]
                })
                .collect();
            f
        };
        let mut st = StreamState::new();
        for i in 0..3 {
            take(&mut st, shot(true, i), 5);
        }
        for i in 3..5 {
            take(&mut st, shot(false, i), 5);
        }
        assert_eq!(keyframes(&st), vec![0, 3]);
        let cuts: Vec<u64> = st
            .waiting
            .iter()
            .filter(|w| w.frame.scene_cut)
            .map(|w| w.frame.index)
            .collect();
        assert_eq!(cuts, vec![3]);
        // With scene cuts off, the same frames make one run.
        let mut st = StreamState {
            scene_cuts: false,
            ..StreamState::new()
        };
        for i in 0..5 {
            take(&mut st, shot(i < 3, i), 5);
        }
        assert_eq!(keyframes(&st), vec![0]);
        assert!(st.waiting.iter().all(|w| !w.frame.scene_cut));
    }

    #[test]
    fn auto_runs_last_100_ms_of_video() {
        let mut st = StreamState::new();
        for i in 0..10 {
            take(&mut st, frame(i, i as f64 * 40.0), 0);
        }
        assert_eq!(keyframes(&st), vec![0, 3, 6, 9]);
    }

    /// A follower is ready once the frame before it is done; the next run's keyframe is ready at
    /// once, ahead of its run's waiting followers.
    #[test]
    fn a_follower_waits_for_the_faces_before_it_a_keyframe_does_not() {
        let mut st = StreamState::new();
        for i in 0..5 {
            take(&mut st, frame(i, i as f64 * 40.0), 3);
        }
        assert_eq!(st.ready(), Some(0));
        st.waiting.pop_front();
        assert_eq!(st.ready(), Some(2), "frame 3, the next run's keyframe");
        st.faces_done.insert(0, Vec::new());
        assert_eq!(st.ready(), Some(0), "frame 1 follows frame 0");
    }

    /// Drives the scheduler in simulated time: two workers, frames of stream `s` cost
    /// `costs_s[s]` worker seconds, a stream has frames while `active(s, t)`; the track stage
    /// releases each frame as soon as it is done. Worker seconds served per stream, counted from
    /// `measure_from_s` to `until_s`.
    fn simulate(
        costs_s: &[f64],
        active: impl Fn(usize, f64) -> bool,
        measure_from_s: f64,
        until_s: f64,
    ) -> Vec<f64> {
        use crate::graph::{WhenFull, channel};
        let n = costs_s.len();
        let workers = 2;
        let infos: Vec<Arc<StreamInfo>> = (0..n)
            .map(|index| {
                Arc::new(StreamInfo {
                    id: index.to_string(),
                    index,
                    uri: "testsrc://".into(),
                    live: false,
                })
            })
            .collect();
        let (source_outs, source_ins): (Vec<_>, Vec<_>) = (0..n)
            .map(|s| channel::<Frame>(format!("frames-{s}"), 8, WhenFull::Block))
            .unzip();
        let (work_outs, work_ins): (Vec<_>, Vec<_>) = (0..workers)
            .map(|w| channel::<Work>(format!("work-{w}"), n + 2, WhenFull::Block))
            .unzip();
        let (_done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
        let scheduler = Scheduler {
            inputs: source_ins,
            streams: infos.clone(),
            outs: work_outs,
            done: done_rx,
            windows: Arc::new(StreamWindows::new(n, 10)),
            detect_every: 1,
            scene_cuts: true,
        };
        let mut schedule = Schedule {
            s: &scheduler,
            streams: (0..n).map(|_| StreamState::new()).collect(),
            outstanding: vec![0; workers],
            turn: 0,
            clock_s: 0.0,
        };
        let control = Control::new();
        let mut next_index = vec![0u64; n];
        let mut in_work: Vec<Option<(f64, Work)>> = (0..workers).map(|_| None).collect();
        let mut served = vec![0.0; n];
        let mut now = 0.0;
        while now < until_s {
            for (s, out) in source_outs.iter().enumerate() {
                while active(s, now) && out.len() < 8 {
                    let frame = Frame {
                        stream: infos[s].clone(),
                        index: next_index[s],
                        pts_ms: next_index[s] as f64 * 40.0,
                        width: 64,
                        height: 48,
                        rgb: Vec::new(),
                        gap_before_ms: None,
                        scene_cut: false,
                    };
                    next_index[s] += 1;
                    out.send(frame, &control);
                }
            }
            schedule.take_frames();
            assert!(schedule.hand_out(&control));
            for (w, slot) in in_work.iter_mut().enumerate() {
                if slot.is_none()
                    && let Some(Received::Item(work)) = work_ins[w].try_recv()
                {
                    *slot = Some((now + costs_s[work.frame.stream.index], work));
                }
            }
            // The next frame done, or a little later when no worker has one.
            let next = (0..workers)
                .filter_map(|w| in_work[w].as_ref().map(|(t, _)| (w, *t)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let Some((w, t)) = next else {
                now += 0.001;
                continue;
            };
            now = t;
            let Some((_, work)) = in_work[w].take() else {
                continue;
            };
            let stream = work.frame.stream.index;
            let cost_s = costs_s[stream];
            if now - cost_s >= measure_from_s {
                served[stream] += cost_s;
            }
            schedule.finished(Done {
                worker: w,
                stream,
                seq: work.seq,
                faces: Vec::new(),
                cost_s,
                estimated_s: work.estimated_s,
                full: Some(true),
            });
            scheduler.windows.release(stream);
        }
        served
    }

    /// Two streams that always have frames, one ten times as costly per frame: each gets half
    /// of the workers' time, not half of the frames.
    #[test]
    fn workers_are_shared_by_time_not_by_frame() {
        let served = simulate(&[0.010, 0.100], |_, _| true, 1.0, 20.0);
        let share = served[0] / (served[0] + served[1]);
        assert!((0.45..=0.55).contains(&share), "{served:?}");
    }

    /// A stream that ran alone for a long time, then paused with nothing in work: a costly
    /// stream that comes in at that moment gets no credit for the time it was not there, so the
    /// first stream keeps about half of the workers when it resumes.
    #[test]
    fn a_stream_arriving_while_all_are_idle_banks_no_credit() {
        let served = simulate(
            &[0.010, 0.100],
            |s, t| match s {
                0 => !(60.0..60.2).contains(&t),
                _ => t >= 60.1,
            },
            60.3,
            70.0,
        );
        let share = served[0] / (served[0] + served[1]);
        assert!((0.4..=0.6).contains(&share), "{served:?}");
    }

    #[test]
    fn costs_start_from_the_first_measurement_then_smooth() {
        let mut c = Cost::guess(1.0);
        c.observe(0.1);
        assert_eq!(c.seconds, 0.1);
        c.observe(0.2);
        assert!((c.seconds - 0.13).abs() < 1e-9);
    }
}
