//! What a run reports: per-stream summaries at the end, health lines while it runs.

use super::*;
use std::time::Instant;

use crate::flow::RunStats;
use crate::sources::SourceCounters;

/// What a finished run reports: one entry per stream, and the run as a whole.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub streams: Vec<StreamSummary>,
    pub seconds: f64,
    /// True when the run ended early on a stop request (Ctrl-C).
    pub interrupted: bool,
    /// The reader of the JSON output went away (a closed pipe): the run stopped there, and the
    /// frames still in flight were not written.
    pub output_closed: bool,
    /// Most frames the track stage held back at once to restore decode order.
    pub peak_reorder_frames: usize,
    /// The sinks' own lines (MQTT: records published and dropped).
    pub sink_lines: Vec<String>,
    /// Outputs that could not deliver everything (MQTT: records the broker never acknowledged);
    /// each fails the run, after the summary.
    pub output_failures: Vec<String>,
}

/// One stream's counts: decoded = reported + dropped (+ not written when the output closed).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamSummary {
    pub stream: String,
    pub source: String,
    /// A live source (camera, live test pattern): only such a stream drops frames when behind.
    pub live: bool,
    pub frames_decoded: u64,
    pub frames_reported: u64,
    pub frames_dropped: u64,
    /// Of `frames_dropped`: dropped evenly from the stream's backlog under load (the rest its
    /// source queue dropped when it overflowed).
    pub frames_dropped_evenly: u64,
    /// Live streams: video time per full search over the run, ms (auto mode widens it under
    /// load); `None` for files and when nothing was searched.
    pub full_search_every_ms: Option<f64>,
    pub frames_not_written: u64,
    /// Live sources: successful reconnections and the time without frames they cost.
    pub reconnects: u32,
    pub gap_seconds: f64,
    pub faces: u64,
    /// Confirmed tracks: the people seen.
    pub people: u64,
    /// Seconds from the start of the run to the end of this stream (0: the run's length).
    pub seconds: f64,
    /// The stream ended with this error (its frames decoded before it were all written).
    pub failure: Option<String>,
}

impl RunSummary {
    /// The streams' counts summed, as a stream named "total".
    pub fn total(&self) -> StreamSummary {
        let mut t = StreamSummary {
            stream: "total".into(),
            source: format!("{} streams", self.streams.len()),
            ..StreamSummary::default()
        };
        for s in &self.streams {
            t.frames_decoded += s.frames_decoded;
            t.frames_reported += s.frames_reported;
            t.frames_dropped += s.frames_dropped;
            t.frames_dropped_evenly += s.frames_dropped_evenly;
            t.frames_not_written += s.frames_not_written;
            t.reconnects += s.reconnects;
            t.gap_seconds += s.gap_seconds;
            t.faces += s.faces;
            t.people += s.people;
            t.live |= s.live;
        }
        t
    }

    /// One line per stream, then (with several streams) a total line. Only a live stream drops
    /// frames when behind, so only its line (and the total of a run with one) says how many.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.streams.iter().map(|s| self.line(s)).collect();
        if self.streams.len() > 1 {
            lines.push(self.line(&self.total()));
        }
        lines.extend(self.sink_lines.iter().cloned());
        lines
    }

    /// Streams that failed, with their errors.
    pub fn failures(&self) -> Vec<&str> {
        self.streams
            .iter()
            .filter_map(|s| s.failure.as_deref())
            .chain(self.output_failures.iter().map(String::as_str))
            .collect()
    }

    fn line(&self, s: &StreamSummary) -> String {
        // A stream's own time: one that ended early is not slowed by the others.
        let seconds = if s.seconds > 0.0 {
            s.seconds.min(self.seconds)
        } else {
            self.seconds
        };
        let fps = if seconds > 0.0 {
            s.frames_reported as f64 / seconds
        } else {
            0.0
        };
        let not_written = if self.output_closed {
            format!(
                ", {} not written (output closed by its reader)",
                s.frames_not_written
            )
        } else {
            String::new()
        };
        let ending = if self.output_closed {
            ""
        } else if s.failure.is_some() {
            "; the source failed"
        } else if self.interrupted {
            "; interrupted"
        } else {
            ""
        };
        let name = if s.stream == "total" {
            format!("total ({})", s.source)
        } else {
            format!("stream {} ({})", s.stream, s.source)
        };
        // A file never drops a frame (decoding waits): no count that could only ever be 0.
        let dropped = if s.live || s.frames_dropped > 0 {
            let evenly = if s.frames_dropped_evenly > 0 {
                format!(", {} of them evenly", s.frames_dropped_evenly)
            } else {
                String::new()
            };
            format!(
                ", {} dropped (behind live source{evenly})",
                s.frames_dropped
            )
        } else {
            String::new()
        };
        let searched = s
            .full_search_every_ms
            .map(|ms| format!("; full search every {ms:.0} ms"))
            .unwrap_or_default();
        format!(
            "{name}: {} decoded, {} reported{dropped}{not_written}; {}, {}; {:.1} s, {:.1} fps{searched}{}{ending}",
            count(s.frames_decoded, "frame"),
            s.frames_reported,
            count(s.faces, "face"),
            if s.people == 1 {
                "1 person".to_string()
            } else {
                format!("{} people", s.people)
            },
            seconds,
            fps,
            if s.reconnects > 0 {
                format!(
                    "; {}, {:.1} s without frames",
                    count(u64::from(s.reconnects), "reconnection"),
                    s.gap_seconds
                )
            } else {
                String::new()
            },
        )
    }
}

/// `1 frame`, `2 frames`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Health callback, every `stats_interval_s`.
pub type HealthReport = Box<dyn FnMut(&Health) + Send>;

/// Called when a stream's source ends, with the stream's id and its failure if it failed (its
/// frames are still being written).
pub type StreamEndHook = Arc<dyn Fn(&str, Option<&str>) + Send + Sync>;

/// Callbacks of a run.
#[derive(Default)]
pub struct RunHooks {
    pub progress: Option<Progress>,
    pub health: Option<HealthReport>,
    pub stream_end: Option<StreamEndHook>,
}

/// How a running pipeline is doing: counts so far, queue depths, resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub seconds: f64,
    /// Seconds between health reports.
    pub interval_s: f64,
    pub frames_decoded: u64,
    pub frames_reported: u64,
    pub frames_dropped: u64,
    pub faces: u64,
    /// Resident memory of the process (Linux), MiB.
    pub rss_mb: Option<f64>,
    /// Queue name, items waiting, capacity.
    pub queues: Vec<(String, usize, usize)>,
    /// Live streams paced by load: stream id and full-search interval now (ms, auto mode).
    /// Empty when none is.
    pub paced: Vec<(String, u64)>,
}

impl Health {
    /// One `key=value` line, easy to read and to parse.
    pub fn line(&self) -> String {
        let queues: Vec<String> = self
            .queues
            .iter()
            .map(|(name, depth, cap)| format!("{name}:{depth}/{cap}"))
            .collect();
        // Whole seconds unless lines come more often than that.
        let t = if self.interval_s < 1.0 {
            format!("{:.1}", self.seconds)
        } else {
            format!("{:.0}", self.seconds)
        };
        // Only streams under load: `paced=lobby:300ms,…` (their full-search interval).
        let paced: Vec<String> = self
            .paced
            .iter()
            .map(|(id, ms)| format!("{id}:{ms}ms"))
            .collect();
        let paced = if paced.is_empty() {
            String::new()
        } else {
            format!(" paced={}", paced.join(","))
        };
        format!(
            "stats: t={t}s decoded={} reported={} dropped={} faces={} rss_mb={} queues={}{paced}",
            self.frames_decoded,
            self.frames_reported,
            self.frames_dropped,
            self.faces,
            self.rss_mb
                .map_or_else(|| "?".into(), |m| format!("{m:.1}")),
            queues.join(",")
        )
    }
}

/// Resident memory of this process in MiB (from /proc; `None` elsewhere).
pub fn resident_memory_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Reports [`Health`] at a fixed interval while the graph runs.
pub(crate) struct Monitor {
    pub(crate) every: Duration,
    pub(crate) started: Instant,
    pub(crate) sources: Vec<Arc<SourceCounters>>,
    /// Stream ids, in the order of `sources`.
    pub(crate) streams: Vec<String>,
    pub(crate) sink: RunStats,
    pub(crate) probes: Arc<Vec<graph::QueueProbe>>,
}

impl Monitor {
    pub(crate) fn run(&self, mut report: HealthReport, done: &AtomicBool) {
        let mut next = self.started.checked_add(self.every);
        while !done.load(Ordering::SeqCst) {
            let Some(due) = next else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let now = Instant::now();
            if now < due {
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
                continue;
            }
            // Catch up without a burst of lines if a report was late.
            let mut due = due;
            while due <= Instant::now() {
                match due.checked_add(self.every) {
                    Some(later) => due = later,
                    None => break,
                }
            }
            next = (due > Instant::now()).then_some(due);
            let sink = self.sink.now();
            let (reported, faces) = (sink.reported.iter().sum(), sink.faces.iter().sum());
            let mut queues: Vec<(String, usize, usize)> = self
                .probes
                .iter()
                .map(|p| (p.name.to_string(), p.depth(), p.capacity))
                .collect();
            queues.push(("reorder".into(), sink.reorder_pending, sink.reorder_window));
            report(&Health {
                seconds: self.started.elapsed().as_secs_f64(),
                interval_s: self.every.as_secs_f64(),
                frames_decoded: self
                    .sources
                    .iter()
                    .map(|c| c.decoded.load(Ordering::Relaxed))
                    .sum(),
                frames_reported: reported,
                frames_dropped: self.sources.iter().map(|c| c.dropped()).sum(),
                faces,
                rss_mb: resident_memory_mb(),
                queues,
                paced: self
                    .streams
                    .iter()
                    .zip(self.sources.iter())
                    .filter_map(|(id, c)| {
                        let ms = c.full_search_interval_ms.load(Ordering::Relaxed);
                        (ms > crate::detect::AUTO_DETECT_INTERVAL_MS as u64)
                            .then(|| (id.clone(), ms))
                    })
                    .collect(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(dropped: &[u64], live: &[bool]) -> RunSummary {
        RunSummary {
            streams: dropped
                .iter()
                .enumerate()
                .map(|(i, &d)| StreamSummary {
                    stream: i.to_string(),
                    source: "file:///clip.mp4".into(),
                    frames_decoded: 10,
                    frames_reported: 10 - d,
                    frames_dropped: d,
                    live: live.get(i).copied().unwrap_or(false),
                    ..StreamSummary::default()
                })
                .collect(),
            seconds: 1.0,
            ..RunSummary::default()
        }
    }

    /// Only a live stream can fall behind and drop frames: a file's line does not count drops.
    #[test]
    fn drops_are_counted_for_live_streams_only() {
        let lines = run_of(&[0, 2], &[false, true]).lines();
        assert!(
            lines[0].contains("10 frames decoded, 10 reported; ") && !lines[0].contains("dropped"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("8 reported, 2 dropped (behind live source);"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("2 dropped (behind live source)"),
            "{}",
            lines[2]
        );
        let files = run_of(&[0, 0], &[false, false]).lines();
        assert!(files.iter().all(|l| !l.contains("dropped")), "{files:?}");
        // A live stream says so even when it dropped nothing.
        let live = run_of(&[0], &[true]).lines();
        assert!(
            live[0].contains("0 dropped (behind live source)"),
            "{live:?}"
        );
    }
}
