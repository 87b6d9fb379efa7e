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
//! stream overlap on several workers. Where the pyramid's finest level costs much (large frames, on
//! a CPU), keyframes alternate between a search of every level and a coarse one that leaves it out
//! and follows the faces of the frame before instead ([`Search::Coarse`]): that one waits for the
//! frame before, as a follower does, so a run then lasts two intervals. A keyframe that starts the
//! stream, or comes after a gap or a cut, searches every level.
//!
//! A live camera cannot wait. When a live stream's frames wait for the workers longer than
//! [`MAX_WAITING_MS`], one of them is dropped, chosen so that the frames processed stay evenly
//! spread in time ([`drop_evenly`]) and each follows the faces of the one before; the workers
//! never idle while frames wait. In auto mode its full searches also come less often while it is
//! behind ([`super::pace`]). A frame after frames its source queue dropped (or a reconnection)
//! follows the faces before only across a short gap ([`FOLLOW_GAP_MS`]). While frames are
//! dropped, work is shed further ([`Work::shedding`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Receiver, Select};

use super::Face;
use super::pace::{FOLLOW_GAP_MS, Pace};
use crate::flow::{Done, Search, StreamWindows, Work, end_mark};
use crate::graph::{Control, Input, Output, Received, Sent};
use crate::sources::{Frame, SourceCounters, StreamInfo};

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

/// A live stream's frames waiting for a worker, in its camera's time: beyond, one is dropped
/// evenly (see [`drop_evenly`]), so its records stay about this far behind the camera.
const MAX_WAITING_MS: f64 = 1000.0;

/// Frames a live stream may always have waiting, whatever its frame rate (a run's frames
/// overlap on the workers).
const MIN_WAITING_FRAMES: usize = 4;

/// How long the scheduler sleeps at most before it looks at the stop flag again.
const POLL: Duration = Duration::from_millis(50);

/// The scheduler's inputs and outputs; see the module documentation.
pub(crate) struct Scheduler {
    /// One source queue per stream.
    pub(crate) inputs: Vec<Input<Frame>>,
    pub(crate) streams: Vec<Arc<StreamInfo>>,
    /// Per stream: what its source counts, and the pace the scheduler sets for it (live streams).
    pub(crate) sources: Vec<Arc<SourceCounters>>,
    /// One queue per detect worker; each holds at most one frame and the end marks of streams.
    pub(crate) outs: Vec<Output<Work>>,
    /// The workers' reports of frames done.
    pub(crate) done: Receiver<Done>,
    pub(crate) windows: Arc<StreamWindows>,
    pub(crate) detect_every: u32,
    /// Tell scene cuts (see [`super::cut`]).
    pub(crate) scene_cuts: bool,
    /// The detector's smallest face: where the finest pyramid level costs much, keyframes
    /// alternate with coarse ones (see [`super::coarse_pays`]).
    pub(crate) min_face_px: f64,
}

/// A frame taken from its source queue, not yet handed to a worker.
struct Waiting {
    seq: u64,
    frame: Frame,
    /// Searched in full; otherwise follows the frame `seq - 1`.
    keyframe: bool,
    /// A coarse keyframe ([`Search::Coarse`]): like a follower, it waits for the frame before
    /// it and follows that frame's faces, so what it finds does not depend on timing.
    coarse: bool,
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
    /// Frames from one full search to the next (0: auto), this stream's.
    detect_every: u32,
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
    last_pts_ms: Option<f64>,
    first_pts_ms: Option<f64>,
    /// Time between the source's frames (kept or not), ms, smoothed; 0 until two frames came.
    frame_ms: f64,
    /// Live streams: the pace by load.
    pace: Option<Pace>,
    /// The last frame handed out: its sequence number and time.
    handed: Option<(u64, f64)>,
    /// Auto mode: video time between full searches now, ms.
    interval_ms: f64,
    /// Faces of frames done, by sequence number, kept while the frame after them may follow them.
    faces_done: BTreeMap<u64, Vec<Face>>,
    /// The next keyframe searches every pyramid level; keyframes alternate between that and a
    /// coarse search (see [`crate::detect::Mtcnn::detect_coarse`]) where `coarse_pays`.
    fine_next: bool,
    /// A coarse search saves much at the stream's frame size ([`super::coarse_pays`]).
    coarse_pays: bool,
    /// The frame coming is the first at a new size: faces before are in other coordinates.
    size_changed: bool,
    /// The last frame's thumbnail, to tell a scene cut ([`super::cut`]), when they are told.
    thumbnail: Option<super::cut::Thumbnail>,
    scene_cuts: bool,
    /// Bytes of the stream's frames, as its window was sized for.
    frame_bytes: usize,
    /// Worker seconds served so far (the stream's virtual time).
    served_s: f64,
    full_cost: Cost,
    /// A coarse keyframe's ([`Search::Coarse`]); until one is measured, a full one's.
    coarse_cost: Cost,
    follow_cost: Cost,
}

impl StreamState {
    fn new() -> Self {
        Self {
            detect_every: 1,
            open: true,
            end_sent: false,
            waiting: VecDeque::new(),
            next_seq: 0,
            in_work: 0,
            run_frames: 0,
            run_keyframe_pts_ms: 0.0,
            last_index: None,
            last_pts_ms: None,
            first_pts_ms: None,
            frame_ms: 0.0,
            pace: None,
            handed: None,
            interval_ms: super::AUTO_DETECT_INTERVAL_MS,
            faces_done: BTreeMap::new(),
            fine_next: true,
            coarse_pays: false,
            size_changed: false,
            thumbnail: None,
            scene_cuts: true,
            frame_bytes: 0,
            served_s: 0.0,
            full_cost: Cost::guess(0.0),
            coarse_cost: Cost::guess(0.0),
            follow_cost: Cost::guess(FIRST_GUESS_FOLLOW_S),
        }
    }

    /// Time between the source's frames, 40 ms (25 fps) until measured.
    fn frame_ms_or_guess(&self) -> f64 {
        if self.frame_ms > 0.0 {
            self.frame_ms
        } else {
            40.0
        }
    }

    /// Waiting frames or frames in work: the stream competes for the workers.
    fn busy(&self) -> bool {
        !self.waiting.is_empty() || self.in_work > 0
    }

    /// The first waiting frame a worker can take now: a keyframe, or a frame whose frame before
    /// is done (its faces are known).
    fn ready(&self) -> Option<usize> {
        self.waiting.iter().position(|w| {
            (w.keyframe && !w.coarse) || self.faces_done.contains_key(&(w.seq.wrapping_sub(1)))
        })
    }

    fn estimate(&self, search: &Search) -> f64 {
        match search {
            Search::Coarse(_) if self.coarse_cost.measured => self.coarse_cost.seconds,
            Search::Full | Search::Coarse(_) => self.full_cost.seconds,
            Search::Follow(_) | Search::EndMark => self.follow_cost.seconds,
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
    /// Wall clock of the live streams' pacing.
    started: std::time::Instant,
}

impl Scheduler {
    /// [`drop_evenly`] for stream `i`, its window slot released and the drop counted.
    fn drop_evenly(&self, i: usize, st: &mut StreamState) -> bool {
        if !drop_evenly(st) {
            return false;
        }
        self.windows.release(i);
        if let Some(c) = self.sources.get(i) {
            c.dropped_evenly.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    pub(crate) fn run(self, control: &Control) -> Result<(), String> {
        for (info, c) in self.streams.iter().zip(&self.sources) {
            if info.live && info.detect_every.unwrap_or(self.detect_every) == 0 {
                c.full_search_interval_ms
                    .store(super::AUTO_DETECT_INTERVAL_MS as u64, Ordering::Relaxed);
            }
        }
        let result = Schedule {
            s: &self,
            streams: self
                .streams
                .iter()
                .map(|info| StreamState {
                    scene_cuts: self.scene_cuts,
                    detect_every: info.detect_every.unwrap_or(self.detect_every),
                    pace: info.live.then(Pace::default),
                    ..StreamState::new()
                })
                .collect(),
            outstanding: vec![0; self.outs.len()],
            turn: 0,
            clock_s: 0.0,
            started: std::time::Instant::now(),
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
            // After handing out: a frame that just came and goes to a worker now is no backlog.
            self.pace();
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
                let live = st.pace.is_some();
                if !self.s.windows.has_room(i) {
                    // A live stream keeps up with its camera: the new frame takes the place of a
                    // waiting one, dropped evenly, rather than the queue dropping its oldest ones
                    // in a burst.
                    if live && !input.is_empty() && self.s.drop_evenly(i, st) {
                        continue;
                    }
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
                            st.coarse_pays =
                                super::coarse_pays(frame.width, frame.height, self.s.min_face_px);
                            st.size_changed = true;
                        }
                        self.s.windows.take(i);
                        let pts_ms = frame.pts_ms;
                        let first_pts_ms = *st.first_pts_ms.get_or_insert(pts_ms);
                        let detect_every = st.detect_every;
                        take(st, frame, detect_every);
                        if let Some(c) = self.s.sources.get(i) {
                            let span_ms = (pts_ms - first_pts_ms).max(0.0) as u64;
                            c.video_span_ms.store(span_ms, Ordering::Relaxed);
                        }
                        // A live stream's frames wait at most MAX_WAITING_MS of its camera's
                        // frames: beyond, one is dropped evenly.
                        let most = ((MAX_WAITING_MS / st.frame_ms_or_guess()) as usize)
                            .max(MIN_WAITING_FRAMES);
                        while live && st.waiting.len() > most && self.s.drop_evenly(i, st) {}
                    }
                    Some(Received::Eos | Received::Disconnected) => st.open = false,
                    None => break,
                }
            }
        }
        self.s.windows.set_waiting(held);
    }

    /// Looks at each live stream's backlog and sets its pace (see [`super::pace`]).
    fn pace(&mut self) {
        let now_s = self.started.elapsed().as_secs_f64();
        for (i, st) in self.streams.iter_mut().enumerate() {
            // Only auto mode has an interval to widen (a fixed one only drops evenly), and only
            // once frames come: its start-up time runs from the first.
            if st.pace.is_none() || st.detect_every != 0 || st.first_pts_ms.is_none() {
                continue;
            }
            let counters = self.s.sources.get(i);
            let dropped = counters.map_or(0, |c| c.dropped());
            let queued = self.s.inputs.get(i).map_or(0, |input| input.len());
            let frame_ms = st.frame_ms_or_guess();
            // Video waiting: from the oldest frame not handed out to the newest taken, and the
            // frames still in the source queue.
            let waiting_ms = match (st.waiting.front(), st.last_pts_ms) {
                (Some(oldest), Some(newest)) => (newest - oldest.frame.pts_ms).max(0.0),
                _ => 0.0,
            };
            let backlog_ms = waiting_ms + queued as f64 * frame_ms;
            let Some(pace) = st.pace.as_mut() else {
                continue;
            };
            if pace.observe(now_s, backlog_ms, dropped, frame_ms) {
                st.interval_ms = pace.full_search_interval_ms();
                if let Some(c) = counters {
                    c.full_search_interval_ms
                        .store(st.interval_ms as u64, Ordering::Relaxed);
                }
                tracing::debug!(
                    stream = i,
                    full_search_interval_ms = st.interval_ms,
                    backlog_ms,
                    "pace"
                );
            }
        }
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
            if st.handed.is_none_or(|(seq, _)| w.seq > seq) {
                st.handed = Some((w.seq, w.frame.pts_ms));
            }
            if w.keyframe
                && let Some(c) = self.s.sources.get(i)
            {
                c.full_searches.fetch_add(1, Ordering::Relaxed);
            }
            let search = if w.keyframe && !w.coarse {
                Search::Full
            } else {
                // A follower, or a coarse keyframe: both follow the frame before.
                let previous = st.faces_done.remove(&(w.seq - 1)).unwrap_or_default();
                if w.coarse {
                    Search::Coarse(previous)
                } else {
                    Search::Follow(previous)
                }
            };
            if st.full_cost.seconds == 0.0 {
                st.full_cost = Cost::guess(
                    FIRST_GUESS_FULL_S_PER_PIXEL
                        * f64::from(w.frame.width)
                        * f64::from(w.frame.height),
                );
            }
            let estimated_s = st.estimate(&search);
            st.served_s += estimated_s;
            st.in_work += 1;
            let work = Work {
                seq: w.seq,
                frame: w.frame,
                search,
                estimated_s,
                shedding: st.pace.as_ref().is_some_and(Pace::shedding),
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
                shedding: false,
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
        if done.coarse {
            st.coarse_cost.observe(done.cost_s);
        } else if full {
            st.full_cost.observe(done.cost_s);
        } else {
            st.follow_cost.observe(done.cost_s);
        }
        let next = done.seq + 1;
        // Kept only if the next frame may follow it: not taken yet, or taken as a follower.
        let wanted = next >= st.next_seq
            || st
                .waiting
                .iter()
                .any(|w| w.seq == next && (!w.keyframe || w.coarse));
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

/// Drops one of `st`'s waiting frames, the one whose neighbours are closest in time, so the
/// frames processed stay evenly spread (every other one, then every third…) and each follows
/// the faces of the one before. Never the newest frame, nor one a frame already handed
/// out comes after (its number is taken): the frames after it are renumbered, so the stream's
/// numbers stay without gaps. False when no frame can go.
fn drop_evenly(st: &mut StreamState) -> bool {
    let handed_seq = st.handed.map(|(seq, _)| seq);
    let pts_before = |st: &StreamState, j: usize| -> f64 {
        let seq = st.waiting[j].seq;
        match j.checked_sub(1).map(|k| &st.waiting[k]) {
            Some(w) if w.seq + 1 == seq => w.frame.pts_ms,
            _ => match st.handed {
                Some((handed, pts)) if handed + 1 == seq => pts,
                _ => f64::NEG_INFINITY,
            },
        }
    };
    let victim = (0..st.waiting.len().saturating_sub(1))
        .filter(|&j| handed_seq.is_none_or(|h| st.waiting[j].seq > h))
        .map(|j| (j, st.waiting[j + 1].frame.pts_ms - pts_before(st, j)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let Some((j, _)) = victim else {
        return false;
    };
    let Some(removed) = st.waiting.remove(j) else {
        return false;
    };
    for w in st.waiting.iter_mut().skip(j) {
        w.seq -= 1;
    }
    st.next_seq -= 1;
    if let Some(next) = st.waiting.get_mut(j) {
        // It followed the frame dropped: it follows the one before, however far (under this
        // much load, a full search for every frame after a long gap would take the time of
        // several frames, and the stream would fall further behind); the full searches still
        // come at the stream's interval. If the frame dropped started a run, or another shot,
        // it does.
        if removed.keyframe {
            // It takes the dropped keyframe's search, coarse only in a follower's place: a
            // keyframe's frame before may have let its faces go. (A frame after a gap or a cut
            // is never coarse.)
            next.coarse = removed.coarse && !next.keyframe;
        }
        next.keyframe |= removed.keyframe || removed.frame.gap_before_ms.is_some();
        next.frame.scene_cut |= removed.frame.scene_cut;
        if next.frame.gap_before_ms.is_none() {
            next.frame.gap_before_ms = removed.frame.gap_before_ms;
        }
        if next.keyframe && !next.coarse {
            // Nothing follows the frame before any more.
            if let Some(before) = next.seq.checked_sub(1) {
                st.faces_done.remove(&before);
            }
        }
    }
    true
}

/// Takes `frame` into its stream's waiting list, numbered, and decides whether it starts a run:
/// the first frame, a run full (`detect_every` frames, or with 0 the stream's interval of video,
/// [`super::AUTO_DETECT_INTERVAL_MS`] unless paced), a frame after a long gap (more than
/// [`FOLLOW_GAP_MS`] of frames not kept behind a live source, or lost while a camera reconnected:
/// the faces of the frame before may be far away), or a scene cut (marked on the frame: the faces
/// of the frame before belong to another shot).
fn take(st: &mut StreamState, mut frame: Frame, detect_every: u32) {
    let gap_ms = st.last_pts_ms.map(|last| frame.pts_ms - last);
    let follows_last = match st.last_index {
        Some(last) if frame.index == last + 1 => true,
        Some(last) if frame.index > last => {
            gap_ms.is_some_and(|gap| gap > 0.0 && gap <= FOLLOW_GAP_MS)
        }
        _ => false,
    };
    if let (Some(last), Some(gap)) = (st.last_index, gap_ms)
        && frame.index > last
        && gap > 0.0
    {
        let per_frame_ms = gap / (frame.index - last) as f64;
        st.frame_ms = if st.frame_ms > 0.0 {
            st.frame_ms + 0.2 * (per_frame_ms - st.frame_ms)
        } else {
            per_frame_ms
        };
    }
    let thumbnail = st
        .scene_cuts
        .then(|| super::cut::Thumbnail::of(&frame.rgb, frame.width as usize, frame.height as usize))
        .flatten();
    frame.scene_cut = matches!((&thumbnail, &st.thumbnail), (Some(now), Some(before)) if now.is_cut_after(before));
    st.thumbnail = thumbnail;
    let run_done = match detect_every {
        // Auto: by video time (a little early rather than a frame late: frame times are rounded).
        0 => {
            // The frame bound grows with the interval: at high frame rates, a paced stream's
            // runs still last its interval.
            let max_run =
                f64::from(super::AUTO_MAX_RUN) * st.interval_ms / super::AUTO_DETECT_INTERVAL_MS;
            f64::from(st.run_frames) >= max_run
                || frame.pts_ms - st.run_keyframe_pts_ms >= st.interval_ms - 2.0
        }
        n => st.run_frames >= n,
    };
    // Another shot, a gap, the stream's start: what was seen before is no guide.
    // Read (and reset) before the others: it must not outlive a frame that is fresh anyway.
    let size_changed = std::mem::take(&mut st.size_changed);
    let fresh = size_changed
        || st.run_frames == 0
        || !follows_last
        || frame.gap_before_ms.is_some()
        || frame.scene_cut;
    let keyframe = fresh || run_done;
    let coarse = keyframe && !fresh && !st.fine_next && st.coarse_pays;
    if keyframe {
        st.fine_next = coarse;
        st.run_frames = 0;
        st.run_keyframe_pts_ms = frame.pts_ms;
        // Nothing will follow the frame before.
        if let Some(before) = st.next_seq.checked_sub(1)
            && !coarse
        {
            st.faces_done.remove(&before);
        }
    }
    st.run_frames += 1;
    st.last_index = Some(frame.index);
    st.last_pts_ms = Some(frame.pts_ms);
    let seq = st.next_seq;
    st.next_seq += 1;
    st.waiting.push_back(Waiting {
        seq,
        frame,
        keyframe,
        coarse,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Control;

    fn frame(index: u64, pts_ms: f64) -> Frame {
        Frame {
            stream: Arc::new(StreamInfo {
                clock_origin_ms: Default::default(),
                id: "0".into(),
                index: 0,
                uri: "testsrc://".into(),
                live: false,
                detect_every: None,
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
    fn runs_of_n_start_with_a_keyframe_and_go_on_across_a_dropped_frame() {
        let mut st = StreamState::new();
        for i in 0..7 {
            take(&mut st, frame(i, i as f64 * 40.0), 3);
        }
        // Frame 8 after a dropped frame 7: 80 ms on, it follows frame 6.
        take(&mut st, frame(8, 320.0), 3);
        assert_eq!(keyframes(&st), vec![0, 3, 6]);
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

    /// Frames not kept behind a live source leave gaps in the frame numbers: a short gap is
    /// followed across, a long one (or a reconnection) starts a run.
    #[test]
    fn short_gaps_are_followed_long_ones_and_reconnections_are_searched() {
        let mut st = StreamState::new();
        // Every other frame of a 25 fps stream (80 ms apart), with runs of 6.
        for i in 0..6 {
            take(&mut st, frame(2 * i, (2 * i) as f64 * 40.0), 6);
        }
        assert_eq!(keyframes(&st), vec![0]);
        // 400 ms without a frame kept: too far to follow.
        take(&mut st, frame(20, 800.0), 6);
        // A reconnection, however short the gap.
        let mut back = frame(21, 840.0);
        back.gap_before_ms = Some(30.0);
        take(&mut st, back, 6);
        take(&mut st, frame(23, 920.0), 6);
        assert_eq!(keyframes(&st), vec![0, 20, 21]);
    }

    /// A paced stream's runs last its interval, frames kept or not.
    #[test]
    fn a_wider_interval_makes_longer_runs() {
        let mut st = StreamState {
            interval_ms: 500.0,
            ..StreamState::new()
        };
        for i in 0..30 {
            take(&mut st, frame(i, i as f64 * 40.0), 0);
        }
        assert_eq!(keyframes(&st), vec![0, 13, 26]);
    }

    /// Frames dropped from a live backlog go evenly: the one whose neighbours are closest,
    /// never the newest; numbers stay without gaps, and the frame after a keyframe dropped
    /// searches in full itself.
    #[test]
    fn frames_are_dropped_evenly_from_a_backlog() {
        let mut st = StreamState::new();
        for i in 0..6 {
            take(&mut st, frame(i, i as f64 * 40.0), 0);
        }
        // Frame 0 handed out (the keyframe); 1..=5 wait, 3 starts the next run.
        let first = st.waiting.pop_front().unwrap();
        st.handed = Some((first.seq, first.frame.pts_ms));
        assert_eq!(keyframes(&st), vec![3]);
        let indices =
            |st: &StreamState| -> Vec<u64> { st.waiting.iter().map(|w| w.frame.index).collect() };
        assert!(drop_evenly(&mut st));
        assert_eq!(
            indices(&st),
            vec![2, 3, 4, 5],
            "the oldest of equals goes first"
        );
        // Then frame 3 (between 2 and 4, 80 ms apart; frame 4 takes its place as the run's
        // keyframe), then frame 4 (80 to 200 ms): 0, 2 and 5 are kept.
        assert!(drop_evenly(&mut st));
        assert_eq!(indices(&st), vec![2, 4, 5]);
        assert_eq!(keyframes(&st), vec![4]);
        assert!(drop_evenly(&mut st));
        assert_eq!(indices(&st), vec![2, 5]);
        assert_eq!(keyframes(&st), vec![5]);
        let seqs: Vec<u64> = st.waiting.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(st.next_seq, 3);
        assert!(drop_evenly(&mut st));
        assert_eq!(indices(&st), vec![5]);
        // The newest frame never goes.
        assert!(!drop_evenly(&mut st));
    }

    /// A live 1080p stream searched in full every frame (full and coarse in turn) drops a full
    /// keyframe whose frame before is done: the coarse keyframe after it, which would wait for
    /// faces let go, searches in full instead, and every frame left becomes ready.
    #[test]
    fn a_coarse_keyframe_after_a_dropped_full_one_searches_in_full() {
        let mut st = StreamState {
            coarse_pays: true,
            ..StreamState::new()
        };
        for i in 0..5 {
            take(&mut st, frame(i, i as f64 * 40.0), 1);
        }
        let coarse: Vec<bool> = st.waiting.iter().map(|w| w.coarse).collect();
        assert_eq!(coarse, [false, true, false, true, false]);
        // Frames 0 (full) and 1 (coarse, following 0) handed out and done; 1's faces were let
        // go, as the frame after it, 2, is a full keyframe. Frames 2..=4 wait.
        st.waiting.pop_front();
        st.waiting.pop_front();
        st.handed = Some((1, 40.0));
        // Frame 2 goes (2 and 3 are equally close to their neighbours; the oldest first).
        assert!(drop_evenly(&mut st));
        let left: Vec<(u64, bool, bool)> = st
            .waiting
            .iter()
            .map(|w| (w.frame.index, w.keyframe, w.coarse))
            .collect();
        assert_eq!(left, [(3, true, false), (4, true, false)]);
        // Nothing waits for faces that will not come.
        assert_eq!(st.ready(), Some(0));
    }

    /// A new frame size (the first frame, or a camera at another size) starts a run afresh once:
    /// the frames after it go on as usual.
    #[test]
    fn a_new_size_makes_one_fresh_keyframe() {
        let mut st = StreamState::new();
        st.size_changed = true;
        for i in 0..4 {
            take(&mut st, frame(i, i as f64 * 40.0), 3);
        }
        st.size_changed = true;
        for i in 4..8 {
            take(&mut st, frame(i, i as f64 * 40.0), 3);
        }
        assert_eq!(keyframes(&st), vec![0, 3, 4, 7]);
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
                    clock_origin_ms: Default::default(),
                    id: index.to_string(),
                    index,
                    uri: "testsrc://".into(),
                    live: false,
                    detect_every: None,
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
            sources: Vec::new(),
            outs: work_outs,
            done: done_rx,
            windows: Arc::new(StreamWindows::new(n, 10)),
            detect_every: 1,
            scene_cuts: true,
            min_face_px: 20.0,
        };
        let mut schedule = Schedule {
            s: &scheduler,
            streams: (0..n).map(|_| StreamState::new()).collect(),
            outstanding: vec![0; workers],
            turn: 0,
            clock_s: 0.0,
            started: std::time::Instant::now(),
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
                coarse: false,
            });
            scheduler.windows.release(stream);
        }
        served
    }

    /// Keyframes alternate between a search of every pyramid level and a coarse one that follows
    /// the faces of the frame before; a frame after a gap (or another shot) is searched in full
    /// whatever its turn.
    #[test]
    fn keyframes_alternate_full_and_coarse_and_one_after_a_gap_is_full() {
        use crate::graph::{WhenFull, channel};
        let info = frame(0, 0.0).stream;
        let (source_out, source_in) = channel::<Frame>("frames", 32, WhenFull::Block);
        let (work_out, work_in) = channel::<Work>("work", 32, WhenFull::Block);
        let (_done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
        let scheduler = Scheduler {
            inputs: vec![source_in],
            streams: vec![info.clone()],
            sources: Vec::new(),
            outs: vec![work_out],
            done: done_rx,
            windows: Arc::new(StreamWindows::new(1, 32)),
            detect_every: 3,
            scene_cuts: false,
            min_face_px: 20.0,
        };
        let mut schedule = Schedule {
            s: &scheduler,
            streams: vec![StreamState {
                detect_every: 3,
                // As a 1080p stream's (these frames have no pixels).
                coarse_pays: true,
                ..StreamState::new()
            }],
            outstanding: vec![0],
            turn: 0,
            clock_s: 0.0,
            started: std::time::Instant::now(),
        };
        let control = Control::new();
        let face_of = |seq: u64| Face {
            bbox: [seq as f32, 0.0, seq as f32 + 30.0, 30.0],
            score: 0.99,
            landmarks: [[0.0; 2]; 5],
        };
        let mut searches = Vec::new();
        for index in 0..13u64 {
            let mut next = frame(index, index as f64 * 40.0);
            next.stream = info.clone();
            // Frame 9 comes after a gap (a camera reconnected).
            next.gap_before_ms = (index == 9).then_some(400.0);
            source_out.send(next, &control);
            schedule.take_frames();
            assert!(schedule.hand_out(&control));
            // One worker, one frame at a time: each is done before the next comes.
            let Some(Received::Item(work)) = work_in.try_recv() else {
                panic!("frame {index} not handed out");
            };
            let work_is_key = matches!(work.search, Search::Full | Search::Coarse(_));
            searches.push(match &work.search {
                Search::Full => "full".to_string(),
                Search::Coarse(recent) => format!("coarse {:?}", recent.first().map(|f| f.bbox[0])),
                Search::Follow(_) => "follow".to_string(),
                Search::EndMark => "end".to_string(),
            });
            schedule.finished(Done {
                worker: 0,
                stream: 0,
                seq: work.seq,
                faces: vec![face_of(work.seq)],
                cost_s: 0.01,
                estimated_s: work.estimated_s,
                full: Some(work_is_key),
                coarse: matches!(work.search, Search::Coarse(_)),
            });
            scheduler.windows.release(0);
        }
        let keyframes: Vec<&str> = searches
            .iter()
            .map(String::as_str)
            .filter(|s| *s != "follow")
            .collect();
        assert_eq!(
            keyframes,
            [
                "full",
                "coarse Some(2.0)",
                "full",
                "full",
                "coarse Some(11.0)"
            ],
            "{searches:?}"
        );
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
