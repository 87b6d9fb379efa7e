//! The attribute stage of a video run: age, gender and race for the faces of many frames and
//! streams, batched into few model calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AttributeModel, FacesInImage};
use crate::flow::{Detected, RunContext, StageTimes, StreamWindows};
use crate::graph::{Control, Graph, Input, Output, Received, Sent, WhenFull};

/// How faces of several frames share one model call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// Most faces per model call.
    pub(crate) max_batch: usize,
    /// Longest a face waits for faces of later frames to fill a batch.
    pub(crate) max_wait: Duration,
}

/// Starts the attribute stage on `input` (frames with their faces); the same frames come out,
/// each face with the model's reading.
pub(crate) fn spawn(
    graph: &mut Graph,
    cx: &RunContext,
    input: Input<Detected>,
    model: AttributeModel,
    batching: Batching,
) -> Input<Detected> {
    let (out, annotated) = graph.channel("annotated", cx.queue_frames, WhenFull::Block);
    let stage = AttributesStage {
        model,
        batching,
        windows: cx.windows.clone(),
        input,
        out,
        pixels_for_sinks: cx.keep_pixels.sinks,
        times: cx.times.clone(),
    };
    graph.add_stage("attributes", move |c| stage.run(c));
    annotated
}

/// Adds age, gender and race to the faces of the frames that come in, batched (see
/// [`Batching`]). `pixels_for_sinks`: a sink draws on the frames, so their pixels are kept.
struct AttributesStage {
    model: AttributeModel,
    batching: Batching,
    windows: Arc<StreamWindows>,
    input: Input<Detected>,
    out: Output<Detected>,
    pixels_for_sinks: bool,
    times: StageTimes,
}

impl AttributesStage {
    fn run(self, control: &Control) -> Result<(), String> {
        let AttributesStage {
            mut model,
            batching: Batching {
                max_batch,
                max_wait,
            },
            windows,
            input,
            out,
            pixels_for_sinks,
            times,
        } = self;
        loop {
            let mut batch = Vec::new();
            let mut ended = false;
            match input.recv(control) {
                Received::Item(d) => batch.push(d),
                Received::Eos | Received::Disconnected => ended = true,
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
                    Some(Received::Eos | Received::Disconnected) => ended = true,
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
