//! The detect stage of a video run: each worker finds the faces of the frames the scheduler
//! ([`super::schedule`]) hands it, and reports each one done to the scheduler.

use crossbeam_channel::Sender;

use super::schedule::Scheduler;
use super::{Face, FrameDetector};
use crate::flow::{Detected, Done, PixelReaders, RunContext, Search, StageTimes, Work};
use crate::graph::{Control, Graph, Input, Output, Received, Sent, WhenFull};
use crate::record::FaceRecord;
use crate::sources::Frame;

/// O-Net score of a face whose loss while following calls for a full search at once.
const CLEAR_FACE_SCORE: f32 = 0.95;

/// Starts the detect stage on the streams' frame queues (`frames`, one per stream of
/// `cx.streams`): the scheduler, and one worker per detector. Frames with their faces come out
/// in the order the workers finish them, each with its place in its stream (`seq`).
pub(crate) fn spawn(
    graph: &mut Graph,
    cx: &RunContext,
    frames: Vec<Input<Frame>>,
    detectors: Vec<Box<dyn FrameDetector>>,
    config: &super::DetectConfig,
) -> Input<Detected> {
    let workers = detectors.len();
    // A worker holds at most one frame, and the end marks of streams (see Scheduler), with room
    // to spare.
    let queue = cx.streams.len() + 2;
    let (work_outs, work_ins): (Vec<_>, Vec<_>) = (0..workers)
        .map(|w| {
            let name = if workers == 1 {
                "work".to_string()
            } else {
                format!("work-{w}")
            };
            graph.channel::<Work>(name, queue, WhenFull::Block)
        })
        .unzip();
    // Reports of frames done, back to the scheduler: at most one per frame in flight.
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let scheduler = Scheduler {
        inputs: frames,
        streams: cx.streams.clone(),
        sources: cx.sources.clone(),
        outs: work_outs,
        done: done_rx,
        windows: cx.windows.clone(),
        detect_every: config.detect_every,
        scene_cuts: config.scene_cuts,
        min_face_px: config.min_face_px,
    };
    graph.add_stage("schedule", move |c| scheduler.run(c));
    let (out, detected) = graph.channel("detected", cx.queue_frames, WhenFull::Block);
    for (index, (detector, input)) in detectors.into_iter().zip(work_ins).enumerate() {
        let worker = DetectWorker {
            index,
            detector,
            input,
            keep_pixels: cx.keep_pixels,
            out: out.clone(),
            done: done_tx.clone(),
            times: cx.times.clone(),
        };
        graph.add_stage(format!("detect-{index}"), move |c| worker.run(c));
    }
    detected
}

/// One detect worker.
struct DetectWorker {
    /// This worker's number, in its reports.
    index: usize,
    detector: Box<dyn FrameDetector>,
    input: Input<Work>,
    /// Which later stages read the frame's pixels; otherwise they are released here.
    keep_pixels: PixelReaders,
    out: Output<Detected>,
    /// Reports to the scheduler: each item done, with its cost and faces.
    done: Sender<Done>,
    times: StageTimes,
}

impl DetectWorker {
    /// Takes frames from the worker's queue and finds their faces: in full, or by following the
    /// faces of the stream's frame before that the frame carries.
    fn run(mut self, control: &Control) -> Result<(), String> {
        // The scheduler may have stopped listening (the run is ending): reports then go nowhere.
        let done_tx = self.done.clone();
        let report = |done: Done| {
            let _ = done_tx.send(done);
        };
        loop {
            let Work {
                seq,
                mut frame,
                search,
                estimated_s,
                shedding,
            } = match self.input.recv(control) {
                Received::Item(item) => item,
                Received::Eos | Received::Disconnected => return Ok(()),
            };
            let stream = frame.stream.index;
            let started = std::time::Instant::now();
            let coarse = matches!(search, Search::Coarse(_));
            let (found, full) = match search {
                Search::EndMark => {
                    let mark = Detected {
                        seq,
                        frame,
                        faces: Vec::new(),
                        predictions: Vec::new(),
                        searched_in_full: false,
                        shedding: false,
                        stream_ended: true,
                    };
                    if self.out.send(mark, control) == Sent::Closed {
                        return Ok(());
                    }
                    report(Done {
                        worker: self.index,
                        stream,
                        seq,
                        faces: Vec::new(),
                        cost_s: 0.0,
                        estimated_s,
                        full: None,
                        coarse: false,
                    });
                    continue;
                }
                Search::Full => (self.detect(&frame)?, true),
                Search::Coarse(previous) => (self.coarse(&frame, &previous)?, true),
                Search::Follow(previous) => self.follow(&frame, &previous, !shedding)?,
            };
            let cost_s = started.elapsed().as_secs_f64();
            self.times.detect.observe(cost_s);
            let done = Done {
                worker: self.index,
                stream,
                seq,
                faces: found.clone(),
                cost_s,
                estimated_s,
                full: Some(full),
                coarse,
            };
            let faces: Vec<FaceRecord> = found.into_iter().map(FaceRecord::detection).collect();
            // Without faces, no later stage reads the pixels either.
            if !self.keep_pixels.after_detect(faces.len()) {
                frame.rgb = Vec::new();
            }
            let predictions = vec![None; faces.len()];
            let detected = Detected {
                seq,
                frame,
                faces,
                predictions,
                searched_in_full: full,
                shedding,
                stream_ended: false,
            };
            if self.out.send(detected, control) == Sent::Closed {
                return Ok(());
            }
            // Idle only once the frame has gone on: a worker blocked on a full queue downstream
            // must not be handed the next frame as if it were free.
            report(done);
        }
    }

    fn detect(&mut self, frame: &Frame) -> Result<Vec<Face>, String> {
        self.detector
            .detect_frame(&frame.rgb, frame.width as usize, frame.height as usize)
            .map_err(|e| failed(frame, e))
    }

    fn coarse(&mut self, frame: &Frame, previous: &[Face]) -> Result<Vec<Face>, String> {
        self.detector
            .coarse_frame(
                &frame.rgb,
                frame.width as usize,
                frame.height as usize,
                previous,
            )
            .map_err(|e| failed(frame, e))
    }

    /// The faces of `previous` in this frame; a clear face lost while following (it moved too
    /// far or turned) gets the full search at once, not a run later. Weak faces come and go on
    /// full searches too; they wait for the next keyframe. Also says whether it searched in full.
    /// Follows `previous` into `frame`; with `search_lost`, a clear face lost has the frame
    /// searched in full instead.
    fn follow(
        &mut self,
        frame: &Frame,
        previous: &[Face],
        search_lost: bool,
    ) -> Result<(Vec<Face>, bool), String> {
        let followed = self
            .detector
            .follow_frame(
                &frame.rgb,
                frame.width as usize,
                frame.height as usize,
                previous,
            )
            .map_err(|e| failed(frame, e))?;
        let lost_clear_face = previous.iter().any(|p| {
            p.score >= CLEAR_FACE_SCORE
                && !followed
                    .iter()
                    .any(|f| crate::track::iou(f.bbox, p.bbox) > 0.3)
        });
        if lost_clear_face && search_lost {
            Ok((self.detect(frame)?, true))
        } else {
            Ok((followed, false))
        }
    }
}

fn failed(frame: &Frame, e: super::DetectError) -> String {
    format!("stream {} frame {}: {e}", frame.stream.id, frame.index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{RunContext, testing};
    use crate::graph::WhenFull;
    use std::sync::Arc;

    /// A stand-in detector: a full search finds one face whose box says which frame it came
    /// from (its width in pixels); following keeps the faces it is handed.
    struct Stamp;

    impl FrameDetector for Stamp {
        fn detect_frame(
            &mut self,
            rgb: &[u8],
            _width: usize,
            _height: usize,
        ) -> Result<Vec<Face>, super::super::DetectError> {
            let stamp = rgb.first().copied().unwrap_or(0) as f32;
            Ok(vec![Face {
                bbox: [0.0, 0.0, stamp, 1.0],
                score: 0.9,
                landmarks: [[0.0; 2]; 5],
            }])
        }

        fn follow_frame(
            &mut self,
            _rgb: &[u8],
            _width: usize,
            _height: usize,
            previous: &[Face],
        ) -> Result<Vec<Face>, super::super::DetectError> {
            Ok(previous.to_vec())
        }
    }

    /// Runs the detect stage on `frames_per_stream` frames of each of two streams with two
    /// workers; what came out, each stream's frames released from its window as a track stage
    /// would.
    fn detect(frames_per_stream: u64, detect_every: u32) -> Vec<Detected> {
        detect_with(frames_per_stream, detect_every, [None, None])
    }

    /// As [`detect`], each stream with its own `detect_every` when given.
    fn detect_with(
        frames_per_stream: u64,
        detect_every: u32,
        own: [Option<u32>; 2],
    ) -> Vec<Detected> {
        let streams: Vec<Arc<crate::sources::StreamInfo>> = testing::streams(2)
            .into_iter()
            .zip(own)
            .map(|(info, own)| {
                let mut info = (*info).clone();
                info.detect_every = own;
                Arc::new(info)
            })
            .collect();
        let cx: RunContext = testing::context(&streams, Default::default());
        let mut graph = testing::graph();
        let (feeds, inputs): (Vec<_>, Vec<_>) = streams
            .iter()
            .map(|_| graph.channel::<Frame>("frames", 4, WhenFull::Block))
            .unzip();
        let detectors: Vec<Box<dyn FrameDetector>> = vec![Box::new(Stamp), Box::new(Stamp)];
        let config = crate::detect::DetectConfig {
            detect_every,
            ..Default::default()
        };
        let detected = spawn(&mut graph, &cx, inputs, detectors, &config);
        for (feed, stream) in feeds.into_iter().zip(streams.clone()) {
            graph.add_stage(format!("test-source-{}", stream.index), move |c| {
                for i in 0..frames_per_stream {
                    let mut frame = testing::frame(&stream, i);
                    frame.rgb[0] = i as u8 + 1;
                    feed.send(frame, c);
                }
                Ok(())
            });
        }
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (seen, windows) = (out.clone(), cx.windows.clone());
        graph.add_stage("test-sink", move |c| {
            while let Received::Item(d) = detected.recv(c) {
                windows.release(d.frame.stream.index);
                seen.lock().map_err(|e| e.to_string())?.push(d);
            }
            Ok(())
        });
        graph.run().expect("the graph runs");
        let mut out = out.lock().expect("not poisoned");
        std::mem::take(&mut *out)
    }

    /// Every frame of every stream comes out once, numbered in its stream's order, then one end
    /// mark per stream; with `detect_every` 3, frames 0, 3, 6, … are searched in full and the
    /// others carry their keyframe's face.
    #[test]
    fn every_frame_once_then_each_streams_end_and_runs_follow_their_keyframe() {
        let out = detect(20, 3);
        for stream in 0..2 {
            let mut mine: Vec<&Detected> = out
                .iter()
                .filter(|d| d.frame.stream.index == stream)
                .collect();
            mine.sort_by_key(|d| d.seq);
            assert_eq!(mine.len(), 21, "20 frames and the end mark");
            for (i, d) in mine.iter().enumerate() {
                assert_eq!(d.seq, i as u64);
                if i == 20 {
                    assert!(d.stream_ended && d.faces.is_empty());
                    continue;
                }
                assert!(!d.stream_ended);
                assert_eq!(d.frame.index, i as u64);
                let keyframe = i - i % 3;
                assert_eq!(d.faces.len(), 1);
                assert_eq!(d.faces[0].face.bbox[2], (keyframe + 1) as f32, "frame {i}");
                // No later stage reads pixels here: they are released.
                assert!(d.frame.rgb.is_empty());
            }
        }
    }

    /// A stream with its own `detect_every` (a fleet camera's) follows it; the other the run's.
    #[test]
    fn a_stream_with_its_own_detect_every_follows_it() {
        let out = detect_with(12, 1, [None, Some(4)]);
        for (stream, every) in [(0, 1), (1, 4)] {
            let mut mine: Vec<&Detected> = out
                .iter()
                .filter(|d| d.frame.stream.index == stream && !d.stream_ended)
                .collect();
            mine.sort_by_key(|d| d.seq);
            assert_eq!(mine.len(), 12);
            for (i, d) in mine.iter().enumerate() {
                let keyframe = i - i % every;
                assert_eq!(
                    d.faces[0].face.bbox[2],
                    (keyframe + 1) as f32,
                    "stream {stream} frame {i}"
                );
            }
        }
    }
}
