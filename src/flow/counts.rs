//! What the stages count as a run goes: records written per stream, the track stage's order and
//! people, time spent per item. Read by health lines, metrics and the summary.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Progress callback: frames reported so far, frames the run will report when every input is a
/// file of known length (else `None`), time since the start.
pub type Progress = Box<dyn FnMut(u64, Option<u64>, Duration) + Send>;

/// Time spent per item in the stages, shared with them (cloning shares the histograms).
#[derive(Clone)]
pub struct StageTimes {
    /// Seconds per frame in a detect worker (full detection or following).
    pub detect: Histogram,
    /// Seconds per attribute-model call (a batch of faces).
    pub attributes: Histogram,
    /// Seconds per call of the track stage's second reader of gender and race (a frame's faces).
    pub second_reader: Histogram,
    /// Seconds per item in the sinks (a frame's record and the people it ends, to every sink).
    pub sinks: Histogram,
}

impl Default for StageTimes {
    fn default() -> Self {
        // 0.5 ms to about 4 s.
        let buckets = || Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        Self {
            detect: buckets(),
            attributes: buckets(),
            second_reader: buckets(),
            sinks: buckets(),
        }
    }
}

/// How a stream's source ended: its counts, its error if it failed, and when (seconds into the
/// run).
pub(crate) type StreamEnd = (crate::sources::SourceStats, Option<String>, f64);

/// What the stages have counted so far: the sources' ends, the track stage's order and people,
/// the records the sinks wrote. Stages that count change it through [`RunStats::update`]; health
/// reports, metrics and the summary read copies ([`RunStats::now`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct RunCounts {
    /// Per stream (by index): records written, their faces, frames not written (output closed).
    pub(crate) reported: Vec<u64>,
    pub(crate) faces: Vec<u64>,
    pub(crate) not_written: Vec<u64>,
    /// Frames held back for order now (all streams), the most at once for one stream, and the
    /// window that bounds each stream.
    pub(crate) reorder_pending: usize,
    pub(crate) reorder_peak: usize,
    pub(crate) reorder_window: usize,
    /// People (confirmed tracks) per stream, at the end.
    pub(crate) people: Vec<u64>,
    /// People whose track ended, by (stream id, gender, age group) as their track record says
    /// them (`none` where the record has none).
    pub(crate) people_by_label: std::collections::BTreeMap<(String, String, String), u64>,
    /// The sinks' own summary lines (MQTT: published, dropped).
    pub(crate) sink_lines: Vec<String>,
    /// Outputs that failed to deliver at the end (MQTT: records never acknowledged).
    pub(crate) sink_failures: Vec<String>,
    /// Confirmed tracks alive now, per stream.
    pub(crate) people_in_view: Vec<u64>,
    /// The sinks' own counters now (for metrics): name, value.
    pub(crate) sink_counters: Vec<(String, u64)>,
    /// Per stream: seconds from the start of the run to when its last record was written (0
    /// while it runs).
    pub(crate) written_until_s: Vec<f64>,
    /// Per stream: how its source ended (default while it runs).
    pub(crate) stream_ends: Vec<StreamEnd>,
}

/// One stream's counters in [`RunCounts`].
pub(crate) struct StreamCounts<'a> {
    pub(crate) reported: &'a mut u64,
    pub(crate) faces: &'a mut u64,
    pub(crate) not_written: &'a mut u64,
}

impl RunCounts {
    pub(crate) fn count(&mut self, stream: usize) -> StreamCounts<'_> {
        let grow = |v: &mut Vec<u64>| {
            if v.len() <= stream {
                v.resize(stream + 1, 0);
            }
        };
        grow(&mut self.reported);
        grow(&mut self.faces);
        grow(&mut self.not_written);
        StreamCounts {
            reported: &mut self.reported[stream],
            faces: &mut self.faces[stream],
            not_written: &mut self.not_written[stream],
        }
    }
}

/// The run's counts, shared by the stages (cloning shares them).
#[derive(Clone, Default)]
pub(crate) struct RunStats(Arc<Mutex<RunCounts>>);

impl RunStats {
    pub(crate) fn new(streams: usize, reorder_window: usize) -> Self {
        Self(Arc::new(Mutex::new(RunCounts {
            reported: vec![0; streams],
            faces: vec![0; streams],
            not_written: vec![0; streams],
            reorder_window,
            stream_ends: vec![StreamEnd::default(); streams],
            ..RunCounts::default()
        })))
    }

    /// Changes the counts (a stage that counts). A stage that panicked while counting left them
    /// as they were: they are still counted on.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut RunCounts) -> R) -> R {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut counts)
    }

    /// A copy of the counts now.
    pub(crate) fn now(&self) -> RunCounts {
        self.update(|c| c.clone())
    }

    /// Streams in the run.
    pub(crate) fn streams(&self) -> usize {
        self.update(|c| c.reported.len())
    }
}
