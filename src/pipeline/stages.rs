//! The stage loops of a run: the scheduler, the detect workers, the attribute stage and the JSON
//! writer (which applies tracking in decode order).

use super::*;

/// Takes frames from every stream's queue in turn (one frame per stream per round, so a file that
/// decodes fast cannot starve a live camera), numbers them and hands them to the detect workers
/// through one shared queue, within the [`Window`]. A stream that ends leaves the rotation; when
/// all have ended, each worker gets an end-of-stream.
pub(crate) struct Scheduler {
    pub(crate) inputs: Vec<Input<Frame>>,
    pub(crate) streams: Vec<Arc<crate::sources::StreamInfo>>,
    pub(crate) out: Output<Work>,
    pub(crate) workers: usize,
    pub(crate) window: Arc<Window>,
}

impl Scheduler {
    pub(crate) fn run(self, control: &Control) -> Result<(), String> {
        let result = self.schedule(control);
        for _ in 0..self.workers {
            self.out.send_eos(control);
        }
        result
    }

    pub(crate) fn schedule(&self, control: &Control) -> Result<(), String> {
        let n = self.inputs.len();
        let mut open = vec![true; n];
        let mut next_seq = 0u64;
        let mut turn = 0usize;
        while open.iter().any(|&o| o) {
            if !self.window.admit(next_seq, control) {
                return Ok(());
            }
            // The next stream in turn with a frame waiting; else wait for any.
            let ready = (0..n).map(|k| (turn + k) % n).find_map(|i| {
                open[i]
                    .then(|| self.inputs[i].try_recv())
                    .flatten()
                    .map(|r| (i, r))
            });
            let (i, received) = match ready {
                Some(r) => r,
                None => {
                    if control.has_error() {
                        return Ok(());
                    }
                    let waiting: Vec<usize> = (0..n).filter(|&i| open[i]).collect();
                    let inputs: Vec<&Input<Frame>> =
                        waiting.iter().map(|&i| &self.inputs[i]).collect();
                    match graph::recv_any(&inputs, Duration::from_millis(50)) {
                        Some((k, r)) => (waiting[k], r),
                        None => continue,
                    }
                }
            };
            let work = match received {
                Received::Item(frame) => {
                    turn = (i + 1) % n;
                    Work {
                        seq: next_seq,
                        frame,
                        stream_ended: false,
                    }
                }
                Received::Eos | Received::Disconnected => {
                    open[i] = false;
                    Work {
                        seq: next_seq,
                        frame: end_mark(&self.streams[i]),
                        stream_ended: true,
                    }
                }
            };
            if self.out.send(work, control) == Sent::Closed {
                return Ok(());
            }
            next_seq += 1;
        }
        Ok(())
    }
}

/// One detect worker: takes numbered frames from the shared queue, finds their faces.
/// `keep_pixels`: a later stage reads the frame's pixels; otherwise they are released here.
pub(crate) fn detect_worker(
    detector: &mut dyn FrameDetector,
    input: &Input<Work>,
    keep_pixels: bool,
    out: &Output<Detected>,
    control: &Control,
) -> Result<(), String> {
    loop {
        let Work {
            seq,
            mut frame,
            stream_ended,
        } = match input.recv(control) {
            Received::Item(item) => item,
            Received::Eos | Received::Disconnected => return Ok(()),
        };
        if stream_ended {
            let mark = Detected {
                seq,
                frame,
                faces: Vec::new(),
                predictions: Vec::new(),
                stream_ended,
            };
            if out.send(mark, control) == Sent::Closed {
                return Ok(());
            }
            continue;
        }
        let faces = detector
            .detect_frame(&frame.rgb, frame.width as usize, frame.height as usize)
            .map_err(|e| format!("stream {} frame {}: {e}", frame.stream.id, frame.index))?;
        let faces: Vec<FaceRecord> = faces.into_iter().map(FaceRecord::detection).collect();
        // Without faces, no later stage reads the pixels either.
        if !keep_pixels || faces.is_empty() {
            frame.rgb = Vec::new();
        }
        let predictions = vec![None; faces.len()];
        let detected = Detected {
            seq,
            frame,
            faces,
            predictions,
            stream_ended: false,
        };
        if out.send(detected, control) == Sent::Closed {
            return Ok(());
        }
    }
}

/// Adds age, gender and race to the faces of frames from `upstream` detect workers. Faces of
/// several frames share one model call: up to `max_batch` faces, waiting at most `max_wait` for
/// more. Ends after every upstream worker's end-of-stream and forwards one.
pub(crate) fn attributes_stage(
    model: &mut AttributeModel,
    config: &AttributesConfig,
    window: &Window,
    (input, upstream): (&Input<Detected>, usize),
    out: &Output<Detected>,
    control: &Control,
) -> Result<(), String> {
    let mut eos_seen = 0usize;
    let max_wait = Duration::from_millis(config.max_wait_ms);
    loop {
        let mut batch = Vec::new();
        let mut ended = false;
        match input.recv(control) {
            Received::Item(d) => batch.push(d),
            Received::Eos => {
                eos_seen += 1;
                ended = eos_seen >= upstream;
            }
            Received::Disconnected => ended = true,
        }
        let mut faces: usize = batch.iter().map(|d| d.faces.len()).sum();
        let deadline = Instant::now() + max_wait;
        // Gather until the batch is full, the wait is over, or the window is: then the frames held
        // here are what the writer waits for, and waiting longer only stalls the run.
        while !ended && faces > 0 && faces < config.max_batch && !window.is_full() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match input.recv_until(deadline.min(now + Duration::from_millis(5)), control) {
                None => continue,
                Some(Received::Item(d)) => {
                    faces += d.faces.len();
                    batch.push(d);
                }
                Some(Received::Eos) => {
                    eos_seen += 1;
                    ended = eos_seen >= upstream;
                }
                Some(Received::Disconnected) => ended = true,
            }
        }
        if faces > 0 {
            let images: Vec<FacesInImage<'_>> = batch
                .iter()
                .map(|d| FacesInImage {
                    rgb: &d.frame.rgb,
                    width: d.frame.width as usize,
                    height: d.frame.height as usize,
                    faces: d.faces.iter().map(|f| &f.face).collect(),
                })
                .collect();
            let predictions = model
                .predict_faces(&images)
                .map_err(|e| format!("frame {}: {e}", batch[0].frame.index))?;
            drop(images);
            // Read out later, through each face's track.
            for (d, predicted) in batch.iter_mut().zip(predictions) {
                d.predictions = predicted;
            }
        }
        // No later stage reads the pixels: release them before the frame waits to be written.
        for d in &mut batch {
            d.frame.rgb = Vec::new();
        }
        for d in batch {
            if out.send(d, control) == Sent::Closed {
                return Ok(());
            }
        }
        if ended {
            return Ok(());
        }
    }
}

/// The JSON Lines writer: restores decode order, writes one record per frame, flushes at least
/// every second (also while no frame comes), and keeps the [`Window`] moving.
pub(crate) struct JsonStage {
    pub(crate) input: Input<Detected>,
    pub(crate) upstream: usize,
    /// Track ids, steady attributes and one record per person, over frames in decode order.
    pub(crate) people: People,
    pub(crate) writer: JsonLinesWriter,
    pub(crate) window: Arc<Window>,
    pub(crate) counts: Arc<Mutex<SinkCounts>>,
    pub(crate) progress: Option<Progress>,
    pub(crate) started: Instant,
}

/// How often the writer looks at its buffer while no frame comes.
pub(crate) const IDLE_FLUSH_CHECK: Duration = Duration::from_millis(250);

impl JsonStage {
    /// The reader of the output went away: stop the run, keep draining. Returns true (closed).
    pub(crate) fn output_closed(&self, control: &Control) -> bool {
        control.request_stop();
        if let Ok(mut n) = self.counts.lock() {
            n.output_closed = true;
        }
        true
    }

    /// Writes people's track records; true when the output turned out closed.
    fn write_people(
        &mut self,
        people: &[crate::sinks::TrackRecord],
        control: &Control,
    ) -> Result<bool, String> {
        for person in people {
            match self.writer.write(person) {
                Ok(()) => {}
                Err(e) if e.is_broken_pipe() => return Ok(self.output_closed(control)),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(false)
    }

    pub(crate) fn run(mut self, control: &Control) -> Result<(), String> {
        let result = self.write_all(control);
        // Flush whatever ended the run: complete lines already produced are never lost.
        let closed = self.counts.lock().map(|c| c.output_closed).unwrap_or(false);
        match self.writer.flush() {
            Err(e) if !(closed || e.is_broken_pipe()) => result.and(Err(e.to_string())),
            _ => result,
        }
    }

    pub(crate) fn write_all(&mut self, control: &Control) -> Result<(), String> {
        let mut last_progress = Instant::now();
        let mut reorder = Reorder {
            pending: BTreeMap::new(),
            next_seq: 0,
        };
        let mut eos_seen = 0usize;
        let mut closed = false;
        loop {
            let received = self
                .input
                .recv_until(Instant::now() + IDLE_FLUSH_CHECK, control);
            let done = match received {
                None => {
                    if !closed {
                        match self.writer.flush_if_due() {
                            Ok(()) => {}
                            Err(e) if e.is_broken_pipe() => closed = self.output_closed(control),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    continue;
                }
                Some(Received::Item(d)) => {
                    reorder.push(d);
                    false
                }
                Some(Received::Eos) => {
                    eos_seen += 1;
                    eos_seen >= self.upstream
                }
                Some(Received::Disconnected) => true,
            };
            let pending_before = reorder.pending.len();
            while let Some(d) = reorder.pop(done) {
                self.window.advance_to(reorder.next_seq);
                debug_assert!(
                    d.frame.rgb.is_empty(),
                    "frame {} reached the writer with its pixels",
                    d.frame.index
                );
                let stream = d.frame.stream.index;
                if d.stream_ended {
                    // The stream's people still in view end with it.
                    if !closed {
                        let people = self.people.finish_stream(stream);
                        closed = self.write_people(&people, control)?;
                    }
                    continue;
                }
                if closed {
                    // The reader is gone: keep draining so no stage blocks, write nothing.
                    if let Ok(mut n) = self.counts.lock() {
                        *n.count(stream).not_written += 1;
                    }
                    continue;
                }
                let mut faces_in_frame = d.faces;
                let ended = self.people.frame(
                    &d.frame.stream,
                    d.frame.index,
                    d.frame.pts_ms,
                    &mut faces_in_frame,
                    &d.predictions,
                );
                let faces = faces_in_frame.len() as u64;
                let record = FrameRecord {
                    kind: RecordKind::Frame,
                    stream: d.frame.stream.id.clone(),
                    source: d.frame.stream.uri.clone(),
                    frame: d.frame.index,
                    pts_ms: d.frame.pts_ms,
                    width: d.frame.width,
                    height: d.frame.height,
                    gap_before_ms: d.frame.gap_before_ms,
                    faces: faces_in_frame,
                };
                let written = self.writer.write(&record).and_then(|()| {
                    ended
                        .iter()
                        .try_for_each(|person| self.writer.write(person))
                });
                match written {
                    Ok(()) => {}
                    Err(e) if e.is_broken_pipe() => {
                        closed = self.output_closed(control);
                        if let Ok(mut n) = self.counts.lock() {
                            *n.count(stream).not_written += 1;
                        }
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                }
                if let Ok(mut n) = self.counts.lock() {
                    let c = n.count(stream);
                    *c.reported += 1;
                    *c.faces += faces;
                    let reported = n.reported.iter().sum();
                    if let Some(p) = self.progress.as_mut()
                        && last_progress.elapsed() >= Duration::from_millis(500)
                    {
                        p(reported, self.started.elapsed());
                        last_progress = Instant::now();
                    }
                }
            }
            if let Ok(mut n) = self.counts.lock() {
                n.reorder_pending = reorder.pending.len();
                n.reorder_peak = n.reorder_peak.max(pending_before);
            }
            if done {
                // The people still in view when the run ends.
                if !closed {
                    let people = self.people.finish();
                    closed = self.write_people(&people, control)?;
                }
                if let Ok(mut n) = self.counts.lock() {
                    let streams = n.reported.len();
                    n.people = (0..streams).map(|i| self.people.people(i)).collect();
                }
                let _ = closed;
                return Ok(());
            }
        }
    }
}
