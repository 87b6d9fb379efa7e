//! The attribute stage of a video run: age, gender and race for the faces of many frames and
//! streams, batched into few model calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AttributeError, AttributeModel, FacesInImage};
use crate::flow::{Detected, RunContext, StageTimes, StreamWindows};
use crate::graph::{Control, Graph, Input, Output, Received, Sent, WhenFull};
use crate::model::readout::Prediction;

/// How faces of several frames share one model call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// Most faces per model call.
    pub(crate) max_batch: usize,
    /// Longest a face waits for faces of later frames to fill a batch.
    pub(crate) max_wait: Duration,
    /// Read the faces of every frame, not only of frames searched in full.
    pub(crate) every_frame: bool,
}

/// What reads faces' attributes: the attribute model, or a stand-in in tests.
pub(crate) trait FacePredictor: Send + 'static {
    /// `result[i][j]`: face `j` of picture `i` (see [`AttributeModel::predict_faces`]).
    fn predict_faces(
        &mut self,
        images: &[FacesInImage<'_>],
    ) -> Result<Vec<Vec<Option<Prediction>>>, AttributeError>;
}

impl FacePredictor for AttributeModel {
    fn predict_faces(
        &mut self,
        images: &[FacesInImage<'_>],
    ) -> Result<Vec<Vec<Option<Prediction>>>, AttributeError> {
        AttributeModel::predict_faces(self, images)
    }
}

/// Starts the attribute stage on `input` (frames with their faces); the same frames come out,
/// each face with the model's reading.
pub(crate) fn spawn(
    graph: &mut Graph,
    cx: &RunContext,
    input: Input<Detected>,
    model: impl FacePredictor,
    batching: Batching,
) -> Input<Detected> {
    let (out, annotated) = graph.channel("annotated", cx.queue_frames, WhenFull::Block);
    let stage = AttributesStage {
        model,
        batching,
        windows: cx.windows.clone(),
        input,
        out,
        pixels_later: cx.keep_pixels.after_attributes(),
        times: cx.times.clone(),
    };
    graph.add_stage("attributes", move |c| stage.run(c));
    annotated
}

/// Adds age, gender and race to the faces of the frames that come in, batched (see
/// [`Batching`]). `pixels_later`: a later stage reads the frames' pixels, so they are kept.
struct AttributesStage<M> {
    model: M,
    batching: Batching,
    windows: Arc<StreamWindows>,
    input: Input<Detected>,
    out: Output<Detected>,
    pixels_later: bool,
    times: StageTimes,
}

impl<M: FacePredictor> AttributesStage<M> {
    fn run(self, control: &Control) -> Result<(), String> {
        let AttributesStage {
            mut model,
            batching:
                Batching {
                    max_batch,
                    max_wait,
                    every_frame,
                },
            windows,
            input,
            out,
            pixels_later,
            times,
        } = self;
        loop {
            // Without `every_frame`, only frames searched in full are read: a track's estimate
            // weighs many readings of its face, and the faces between are followed (faster, but
            // see `[attributes] every_frame`).
            // A live stream that drops frames (shedding) is read like that too.
            let read = |d: &Detected| (every_frame && !d.shedding) || d.searched_in_full;
            let to_read = |d: &Detected| if read(d) { d.faces.len() } else { 0 };
            let mut batch = Vec::new();
            let mut ended = false;
            match input.recv(control) {
                Received::Item(d) => batch.push(d),
                Received::Eos | Received::Disconnected => ended = true,
            }
            let mut faces: usize = batch.iter().map(to_read).sum();
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
                        faces += to_read(&d);
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
                        faces: if read(d) {
                            d.faces.iter().map(|f| &f.face).collect()
                        } else {
                            Vec::new()
                        },
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
                    if read(d) {
                        d.predictions = predicted;
                    }
                }
            }
            // Unless a later stage reads them, release the pixels before the frame waits to be
            // written.
            if !pixels_later {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Face;
    use crate::flow::{PixelReaders, testing};
    use crate::record::FaceRecord;

    /// A stand-in model: counts its calls and the faces in each, reads every face as the same.
    struct Count(Arc<std::sync::Mutex<Vec<usize>>>);

    impl FacePredictor for Count {
        fn predict_faces(
            &mut self,
            images: &[FacesInImage<'_>],
        ) -> Result<Vec<Vec<Option<Prediction>>>, AttributeError> {
            let faces = images.iter().map(|i| i.faces.len()).sum();
            self.0.lock().expect("not poisoned").push(faces);
            let reading = Prediction::from_logits(
                &[0.0; crate::model::FINE_AGE_BINS],
                &[0.0, 1.0],
                &[0.0; 5],
            );
            Ok(images
                .iter()
                .map(|i| vec![Some(reading.clone()); i.faces.len()])
                .collect())
        }
    }

    fn with_faces(stream: &Arc<crate::sources::StreamInfo>, index: u64, faces: usize) -> Detected {
        let face = FaceRecord::detection(Face {
            bbox: [0.0, 0.0, 4.0, 4.0],
            score: 0.9,
            landmarks: [[0.0; 2]; 5],
        });
        Detected {
            seq: index,
            frame: testing::frame(stream, index),
            faces: vec![face; faces],
            predictions: vec![None; faces],
            searched_in_full: true,
            shedding: false,
            stream_ended: false,
        }
    }

    /// Runs the attribute stage alone over `items` (no sink draws): what came out, and the faces
    /// of each model call.
    fn annotate(
        streams: &[Arc<crate::sources::StreamInfo>],
        batching: Batching,
        items: Vec<Detected>,
    ) -> (Vec<Detected>, Vec<usize>) {
        let pixels = PixelReaders {
            attributes: true,
            ..PixelReaders::default()
        };
        let cx = testing::context(streams, pixels);
        let mut graph = testing::graph();
        let (feed, input) = testing::feed(&mut graph);
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let annotated = spawn(&mut graph, &cx, input, Count(calls.clone()), batching);
        let out = testing::run(graph, feed, items, annotated);
        let calls = calls.lock().expect("not poisoned").clone();
        (out, calls)
    }

    /// Faces of several frames share model calls of at most `max_batch` faces; every face gets
    /// its reading, frames without faces pass, and pixels no sink draws on are released.
    #[test]
    fn faces_of_several_frames_share_calls_and_every_face_is_read() {
        let streams = testing::streams(1);
        let batching = Batching {
            max_batch: 4,
            max_wait: Duration::from_millis(200),
            every_frame: true,
        };
        let items = (0..10)
            .map(|i| with_faces(&streams[0], i, (i % 3) as usize))
            .collect();
        let (out, calls) = annotate(&streams, batching, items);
        assert_eq!(out.len(), 10);
        let faces: usize = out.iter().map(|d| d.faces.len()).sum();
        assert!(
            out.iter()
                .all(|d| d.predictions.iter().all(Option::is_some))
        );
        assert!(out.iter().all(|d| d.frame.rgb.is_empty()));
        assert_eq!(calls.iter().sum::<usize>(), faces);
        // A batch may pass max_batch by the faces of its last frame (at most 2), never by a whole
        // frame more.
        assert!(calls.iter().all(|&n| n < 4 + 2), "{calls:?}");
        assert!(
            calls.len() < out.iter().filter(|d| !d.faces.is_empty()).count(),
            "{calls:?}"
        );
    }

    /// Without `every_frame`, only the faces of frames searched in full are read; the others
    /// pass with no reading.
    #[test]
    fn only_frames_searched_in_full_are_read_unless_every_frame() {
        let streams = testing::streams(1);
        let batching = Batching {
            max_batch: 32,
            max_wait: Duration::from_millis(0),
            every_frame: false,
        };
        let items = (0..6)
            .map(|i| Detected {
                searched_in_full: i % 3 == 0,
                shedding: false,
                ..with_faces(&streams[0], i, 2)
            })
            .collect();
        let (out, calls) = annotate(&streams, batching, items);
        for d in &out {
            let read = d.predictions.iter().all(Option::is_some);
            let unread = d.predictions.iter().all(Option::is_none);
            assert!(if d.searched_in_full { read } else { unread });
        }
        let read: usize = calls.iter().sum();
        assert_eq!(read, 4, "two frames of two faces");
    }
}
