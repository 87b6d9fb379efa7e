//! Restores each stream's decode order after the detect workers, who finish frames out of order.

use std::collections::BTreeMap;

use super::Detected;

/// Holds back a stream's frames until every frame before them has come, stream by stream: a slow
/// frame of one stream never holds back another stream's frames.
#[derive(Default)]
pub(crate) struct Reorder {
    /// Per stream: frames waiting for one before them, by sequence number.
    pending: Vec<BTreeMap<u64, Detected>>,
    /// Per stream: the sequence number that comes out next.
    next_seq: Vec<u64>,
}

impl Reorder {
    pub(crate) fn new(streams: usize) -> Self {
        Self {
            pending: (0..streams).map(|_| BTreeMap::new()).collect(),
            next_seq: vec![0; streams],
        }
    }

    fn grow(&mut self, stream: usize) {
        if self.pending.len() <= stream {
            self.pending.resize_with(stream + 1, BTreeMap::new);
            self.next_seq.resize(stream + 1, 0);
        }
    }

    /// Takes a frame; its stream's frames that are now in order come out of [`pop`](Self::pop).
    pub(crate) fn push(&mut self, d: Detected) {
        let stream = d.frame.stream.index;
        self.grow(stream);
        self.pending[stream].insert(d.seq, d);
    }

    /// The next frame of `stream` in order; with `flush`, also frames after a gap (a worker that
    /// failed).
    pub(crate) fn pop(&mut self, stream: usize, flush: bool) -> Option<Detected> {
        let pending = self.pending.get_mut(stream)?;
        let next = self.next_seq[stream];
        let d = match pending.remove(&next) {
            Some(d) => d,
            None if flush => pending.pop_first()?.1,
            None => return None,
        };
        self.next_seq[stream] = d.seq + 1;
        Some(d)
    }

    /// Frames held back now, all streams together.
    pub(crate) fn held(&self) -> usize {
        self.pending.iter().map(BTreeMap::len).sum()
    }

    /// Frames held back now for `stream`.
    pub(crate) fn held_for(&self, stream: usize) -> usize {
        self.pending.get(stream).map_or(0, BTreeMap::len)
    }

    pub(crate) fn streams(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn detected(stream: usize, seq: u64) -> Detected {
        let info = Arc::new(crate::sources::StreamInfo {
            clock_origin_ms: Default::default(),
            id: stream.to_string(),
            index: stream,
            uri: "testsrc://".into(),
            live: false,
            detect_every: None,
        });
        Detected {
            seq,
            frame: crate::flow::end_mark(&info),
            faces: Vec::new(),
            predictions: Vec::new(),
            searched_in_full: true,
            shedding: false,
            stream_ended: false,
        }
    }

    #[test]
    fn restores_each_streams_order_and_flushes_past_gaps_at_the_end() {
        let mut r = Reorder::new(2);
        r.push(detected(0, 1));
        assert!(r.pop(0, false).is_none(), "frame 1 must wait for frame 0");
        r.push(detected(0, 0));
        assert_eq!(r.pop(0, false).map(|d| d.seq), Some(0));
        assert_eq!(r.pop(0, false).map(|d| d.seq), Some(1));
        // Frame 2 lost (a worker failed): 3 waits until the end, then comes out.
        r.push(detected(0, 3));
        assert!(r.pop(0, false).is_none());
        assert_eq!(r.pop(0, true).map(|d| d.seq), Some(3));
        assert!(r.pop(0, true).is_none());
    }

    /// Stream 0 waiting for its frame 0 holds back nothing of stream 1.
    #[test]
    fn a_stream_waiting_for_a_frame_holds_back_no_other_stream() {
        let mut r = Reorder::new(2);
        r.push(detected(0, 1));
        r.push(detected(1, 0));
        r.push(detected(1, 1));
        assert_eq!(r.pop(1, false).map(|d| d.seq), Some(0));
        assert_eq!(r.pop(1, false).map(|d| d.seq), Some(1));
        assert!(r.pop(0, false).is_none());
        assert_eq!((r.held(), r.held_for(0), r.held_for(1)), (1, 1, 0));
    }
}
