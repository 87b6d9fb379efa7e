//! The attribute stage of a video run: age, gender and race for the faces of many frames and
//! streams, batched into few model calls.

use std::time::{Duration, Instant};

use super::{AttributeModel, FacesInImage};
use crate::flow::{Detected, StageTimes, StreamWindows};
use crate::graph::{Control, Input, Output, Received, Sent};

/// Adds age, gender and race to the faces of frames from `upstream` detect workers. Faces of
/// several frames share one model call: up to `max_batch` faces, waiting at most `max_wait` for
/// more. Ends after every upstream worker's end-of-stream and forwards one. `pixels_for_sinks`: a
/// sink draws on the frames, so their pixels are kept.
pub(crate) struct AttributesStage<'a> {
    pub(crate) model: &'a mut AttributeModel,
    /// Most faces per model call.
    pub(crate) max_batch: usize,
    /// Longest a face waits for faces of later frames to fill a batch.
    pub(crate) max_wait: Duration,
    pub(crate) windows: &'a StreamWindows,
    pub(crate) input: &'a Input<Detected>,
    /// Detect workers feeding `input`: one end-of-stream from each.
    pub(crate) upstream: usize,
    pub(crate) out: &'a Output<Detected>,
    pub(crate) pixels_for_sinks: bool,
    pub(crate) times: &'a StageTimes,
}

impl AttributesStage<'_> {
    pub(crate) fn run(self, control: &Control) -> Result<(), String> {
        let AttributesStage {
            model,
            max_batch,
            max_wait,
            windows,
            input,
            upstream,
            out,
            pixels_for_sinks,
            times,
        } = self;
        let mut eos_seen = 0usize;
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
            // Gather until the batch is full, the wait is over, or a stream's window is: then the
            // frames held here may be what that stream waits for, and waiting longer stalls it.
            while !ended && faces > 0 && faces < max_batch && !windows.is_full() {
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
                let started = Instant::now();
                let predictions = model
                    .predict_faces(&images)
                    .map_err(|e| format!("frame {}: {e}", batch[0].frame.index))?;
                times.attributes.observe(started.elapsed().as_secs_f64());
                drop(images);
                // Read out later, through each face's track.
                for (d, predicted) in batch.iter_mut().zip(predictions) {
                    d.predictions = predicted;
                }
            }
            // Unless a sink draws on them, no later stage reads the pixels: release them before the
            // frame waits to be written.
            if !pixels_for_sinks {
                for d in &mut batch {
                    d.frame.rgb = Vec::new();
                }
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
}
