//! The detect stage of a video run: each worker finds the faces of the frames it is handed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Face, FrameDetector};
use crate::graph::{Control, Input, Output, Received, Sent};
use crate::pipeline::flow::{Detected, Work};
use crate::sinks::FaceRecord;

/// O-Net score of a face whose loss while following calls for a full search at once.
const CLEAR_FACE_SCORE: f32 = 0.95;

/// One detect worker: takes numbered frames from its queue, finds their faces: in full on
/// keyframes, else by following the faces it found in the stream's frame before.
/// `keep_pixels`: which later stages read the frame's pixels; otherwise they are released here.
/// `busy` counts the frames handed to this worker and not done; the worker counts it down.
pub(crate) fn detect_worker(
    detector: &mut dyn FrameDetector,
    input: &Input<Work>,
    keep_pixels: crate::pipeline::flow::PixelReaders,
    out: &Output<Detected>,
    busy: &AtomicUsize,
    times: &crate::pipeline::metrics::StageTimes,
    control: &Control,
) -> Result<(), String> {
    // Per stream: the faces of the last frame this worker handled.
    let mut last_faces: HashMap<usize, Vec<Face>> = HashMap::new();
    loop {
        let Work {
            seq,
            mut frame,
            stream_ended,
            keyframe,
        } = match input.recv(control) {
            Received::Item(item) => item,
            Received::Eos | Received::Disconnected => return Ok(()),
        };
        let stream = frame.stream.index;
        if stream_ended {
            last_faces.remove(&stream);
            let mark = Detected {
                seq,
                frame,
                faces: Vec::new(),
                predictions: Vec::new(),
                stream_ended,
            };
            busy.fetch_sub(1, Ordering::SeqCst);
            if out.send(mark, control) == Sent::Closed {
                return Ok(());
            }
            continue;
        }
        let (width, height) = (frame.width as usize, frame.height as usize);
        let started = std::time::Instant::now();
        let failed = |e| format!("stream {} frame {}: {e}", frame.stream.id, frame.index);
        let found = match last_faces.get(&stream) {
            Some(previous) if !keyframe => {
                let followed = detector
                    .follow_frame(&frame.rgb, width, height, previous)
                    .map_err(failed)?;
                // A clear face lost while following (it moved too far or turned): this frame
                // gets the full search at once, not N frames later. Weak faces come and go on
                // full searches too; they wait for the next keyframe.
                let lost_clear_face = previous.iter().any(|p| {
                    p.score >= CLEAR_FACE_SCORE
                        && !followed
                            .iter()
                            .any(|f| crate::track::iou(f.bbox, p.bbox) > 0.3)
                });
                if lost_clear_face {
                    detector
                        .detect_frame(&frame.rgb, width, height)
                        .map_err(failed)?
                } else {
                    followed
                }
            }
            _ => detector
                .detect_frame(&frame.rgb, width, height)
                .map_err(failed)?,
        };
        times.detect.observe(started.elapsed().as_secs_f64());
        let faces: Vec<FaceRecord> = found.iter().cloned().map(FaceRecord::detection).collect();
        last_faces.insert(stream, found);
        // Without faces, no later stage reads the pixels either.
        if !(keep_pixels.sinks || keep_pixels.attributes && !faces.is_empty()) {
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
        busy.fetch_sub(1, Ordering::SeqCst);
        if out.send(detected, control) == Sent::Closed {
            return Ok(());
        }
    }
}
