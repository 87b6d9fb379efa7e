//! The sink end of a run: every record, in order, to every sink.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Sink, SinkError};
use crate::flow::{Progress, RunContext, RunStats, StageTimes, Tracked};
use crate::graph::{Control, Graph, Input, Received};
use crate::sources::SourceCounters;

/// Starts the sink stage on `input` (records in each stream's order): every record to every one
/// of `sinks`, `progress` told as records are written.
pub(crate) fn spawn(
    graph: &mut Graph,
    cx: &RunContext,
    input: Input<Tracked>,
    sinks: Vec<Box<dyn Sink>>,
    progress: Option<Progress>,
) {
    let stage = SinkStage {
        input,
        sinks,
        stats: cx.stats.clone(),
        progress,
        sources: cx.sources.clone(),
        started: cx.started,
        times: cx.times.clone(),
    };
    graph.add_stage("sinks", move |c| stage.run(c));
}

/// How often the sinks are offered a flush while no record comes.
pub const IDLE_CHECK: Duration = Duration::from_millis(250);

/// Fans records out to every sink. A sink whose reader went away (a closed pipe) stops the run;
/// the stage keeps draining so no stage upstream blocks, and counts the frames it could not write.
struct SinkStage {
    input: Input<Tracked>,
    sinks: Vec<Box<dyn Sink>>,
    stats: RunStats,
    progress: Option<Progress>,
    /// The sources' counters: what each expects to give, for the progress total.
    sources: Vec<Arc<SourceCounters>>,
    started: Instant,
    times: StageTimes,
}

impl SinkStage {
    fn run(mut self, control: &Control) -> Result<(), String> {
        let result = self.write_all(control);
        // Finish every sink whatever ended the run: what was produced is never lost.
        // An output that could not deliver at the end (records a broker never acknowledged) fails
        // the run after the summary, like a failed stream: it is not a failure of the graph.
        let closed = control.output_closed();
        let mut failures = Vec::new();
        for sink in &mut self.sinks {
            match sink.finish() {
                Err(e) if !(closed || e.is_broken_pipe()) => failures.push(e.to_string()),
                _ => {}
            }
        }
        let lines: Vec<String> = self.sinks.iter().filter_map(|s| s.summary()).collect();
        self.stats.update(|n| {
            n.sink_lines = lines;
            n.sink_failures = failures;
        });
        result
    }

    /// The reader of an output went away: stop the run, keep draining.
    fn output_closed(&self, control: &Control) {
        control.close_output();
    }

    /// Writes one item to every sink; a closed output is not an error but the end of writing.
    fn write_item(&mut self, item: &Tracked) -> Result<(), SinkError> {
        for sink in &mut self.sinks {
            for event in &item.events {
                sink.write_event(event)?;
            }
            if let Some(record) = &item.frame {
                sink.write_frame(item.stream, record, &item.pixels)?;
            }
            for person in &item.ended {
                sink.write_track(person)?;
            }
            if item.stream_ended {
                sink.end_stream(item.stream)?;
            }
        }
        Ok(())
    }

    fn write_all(&mut self, control: &Control) -> Result<(), String> {
        // The first frame is reported at once (a short run still shows what it is doing), then
        // every half second.
        let mut last_progress: Option<Instant> = None;
        let mut closed = false;
        loop {
            let item = match self.input.recv_until(Instant::now() + IDLE_CHECK, control) {
                None => {
                    if !closed {
                        let idle: Result<(), SinkError> =
                            self.sinks.iter_mut().try_for_each(|sink| sink.idle());
                        match idle {
                            Ok(()) => {}
                            Err(e) if e.is_broken_pipe() => {
                                closed = true;
                                self.output_closed(control);
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    continue;
                }
                Some(Received::Item(item)) => item,
                Some(Received::Eos | Received::Disconnected) => return Ok(()),
            };
            let started = Instant::now();
            let written = if closed {
                false
            } else {
                match self.write_item(&item) {
                    Ok(()) => true,
                    Err(e) if e.is_broken_pipe() => {
                        closed = true;
                        self.output_closed(control);
                        false
                    }
                    Err(e) => return Err(e.to_string()),
                }
            };
            self.times.sinks.observe(started.elapsed().as_secs_f64());
            let sink_counters: Vec<(String, u64)> =
                self.sinks.iter().flat_map(|s| s.counters()).collect();
            let started = self.started;
            let reported = self.stats.update(|n| {
                n.sink_counters = sink_counters;
                // The stream's time in the summary ends with its last record, not its decoding.
                if item.stream_ended {
                    if n.written_until_s.len() <= item.stream {
                        n.written_until_s.resize(item.stream + 1, 0.0);
                    }
                    n.written_until_s[item.stream] = started.elapsed().as_secs_f64();
                }
                let record = item.frame.as_ref()?;
                let c = n.count(item.stream);
                if !written {
                    *c.not_written += 1;
                    return None;
                }
                *c.reported += 1;
                *c.faces += record.faces.len() as u64;
                Some(n.reported.iter().sum::<u64>())
            });
            if let (Some(reported), Some(p)) = (reported, self.progress.as_mut())
                && last_progress.is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
            {
                p(
                    reported,
                    expected_frames(&self.sources),
                    self.started.elapsed(),
                );
                last_progress = Some(Instant::now());
            }
        }
    }
}

/// Frames all sources will give, when each knows (files of known length).
fn expected_frames(sources: &[Arc<SourceCounters>]) -> Option<u64> {
    use std::sync::atomic::Ordering;
    sources
        .iter()
        .map(|c| Some(c.expected_frames.load(Ordering::Relaxed)).filter(|&n| n > 0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{PixelReaders, testing};
    use crate::record::{FrameRecord, RecordKind, TrackRecord};
    use std::sync::Mutex;

    /// A stand-in output: says what it was given; fails like a closed pipe after `close_after`
    /// frames.
    struct Said {
        log: Arc<Mutex<Vec<String>>>,
        close_after: Option<usize>,
    }

    impl Sink for Said {
        fn write_frame(
            &mut self,
            stream: usize,
            r: &FrameRecord,
            _: &[u8],
        ) -> Result<(), SinkError> {
            let mut log = self.log.lock().unwrap();
            if self.close_after.is_some_and(|n| log.len() >= n) {
                return Err(crate::sinks::JsonError::Write {
                    target: "standard output".into(),
                    reason: std::io::ErrorKind::BrokenPipe.into(),
                }
                .into());
            }
            log.push(format!("frame {stream}:{}", r.frame));
            Ok(())
        }
        fn write_track(&mut self, r: &TrackRecord) -> Result<(), SinkError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("track {}", r.track_id));
            Ok(())
        }
        fn end_stream(&mut self, stream: usize) -> Result<(), SinkError> {
            self.log.lock().unwrap().push(format!("end {stream}"));
            Ok(())
        }
        fn finish(&mut self) -> Result<(), SinkError> {
            self.log.lock().unwrap().push("finish".into());
            Ok(())
        }
    }

    fn frame(stream: usize, index: u64) -> Tracked {
        Tracked {
            stream,
            frame: Some(FrameRecord {
                kind: RecordKind::Frame,
                stream: stream.to_string(),
                source: String::new(),
                frame: index,
                pts_ms: 0.0,
                time: None,
                width: 8,
                height: 6,
                gap_before_ms: None,
                faces: Vec::new(),
            }),
            pixels: Vec::new(),
            ended: Vec::new(),
            stream_ended: false,
            events: Vec::new(),
        }
    }

    fn run(items: Vec<Tracked>, sinks: Vec<Box<dyn Sink>>) -> (RunStats, bool) {
        let streams = testing::streams(2);
        let cx = testing::context(&streams, PixelReaders::default());
        let mut graph = testing::graph();
        let control = graph.control().clone();
        let (feed, input) = testing::feed(&mut graph);
        spawn(&mut graph, &cx, input, sinks, None);
        graph.add_stage("test-source", move |c| {
            for item in items {
                feed.send(item, c);
            }
            Ok(())
        });
        graph.run().expect("the graph runs");
        (cx.stats.clone(), control.output_closed())
    }

    /// Every item reaches every sink in order, each is finished once, and the counts add up.
    #[test]
    fn every_record_reaches_every_sink_and_each_is_finished() {
        let logs: Vec<Arc<Mutex<Vec<String>>>> = (0..2).map(|_| Arc::default()).collect();
        let sinks = logs
            .iter()
            .map(|log| {
                Box::new(Said {
                    log: log.clone(),
                    close_after: None,
                }) as Box<dyn Sink>
            })
            .collect();
        let ended = Tracked {
            stream_ended: true,
            events: Vec::new(),
            frame: None,
            ..frame(1, 0)
        };
        let (stats, closed) = run(vec![frame(0, 0), frame(1, 0), ended, frame(0, 1)], sinks);
        for log in &logs {
            assert_eq!(
                *log.lock().unwrap(),
                ["frame 0:0", "frame 1:0", "end 1", "frame 0:1", "finish"]
            );
        }
        let counts = stats.now();
        assert_eq!(counts.reported, [2, 1]);
        assert!(counts.written_until_s[1] > 0.0);
        assert!(!closed);
    }

    /// A closed pipe stops the run without an error: later frames are counted as not written,
    /// and every sink is still finished.
    #[test]
    fn a_closed_pipe_stops_writing_and_counts_the_rest() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(Said {
            log: log.clone(),
            close_after: Some(2),
        })];
        let (stats, closed) = run((0..5).map(|i| frame(0, i)).collect(), sinks);
        assert!(closed);
        let counts = stats.now();
        assert_eq!((counts.reported[0], counts.not_written[0]), (2, 3));
        assert_eq!(
            log.lock().unwrap().last().map(String::as_str),
            Some("finish")
        );
    }
}
