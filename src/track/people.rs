//! Tracks turned into people: each stream's [`Tracker`] run over its frames in decode order, each
//! face given its track id and its track's steady attributes, and a [`TrackRecord`] for every
//! confirmed track when it ends.

use std::collections::HashMap;

use super::estimate::{Estimate, face_weight};
use super::{Detection, TrackConfig, Tracker};
use crate::model::AgeGrouping;
use crate::model::readout::Prediction;
use crate::model::spec::ModelSpec;
use crate::record::{Attributes, FaceRecord, RecordKind, TrackRecord};
use crate::sources::StreamInfo;

/// What is known of one track so far.
#[derive(Debug, Clone)]
struct Person {
    first_frame: u64,
    last_frame: u64,
    first_pts_ms: f64,
    last_pts_ms: f64,
    frames: u64,
    estimate: Estimate,
}

#[derive(Debug)]
struct StreamTracks {
    id: String,
    uri: String,
    tracker: Tracker,
    people: HashMap<u64, Person>,
    /// Confirmed tracks that ended so far.
    counted: u64,
}

/// The people of every stream of a run.
pub struct People {
    config: TrackConfig,
    streams: Vec<Option<StreamTracks>>,
    /// The attribute model's spec and the age grouping, when attributes are on.
    attributes: Option<(ModelSpec, AgeGrouping)>,
    detect_every: u32,
}

impl People {
    pub fn new(config: TrackConfig, attributes: Option<(ModelSpec, AgeGrouping)>) -> Self {
        Self {
            config,
            streams: Vec::new(),
            attributes,
            detect_every: 1,
        }
    }

    /// Streams are searched in full every `n` frames only ([`Tracker::with_detect_every`]).
    pub fn with_detect_every(mut self, n: u32) -> Self {
        self.detect_every = n;
        self
    }

    /// One frame of `stream`, frames of a stream given in decode order: sets each face's
    /// `track_id` and, with attributes, its track's estimate so far (this face included); returns
    /// the records of the people whose tracks ended at this frame.
    pub fn frame(
        &mut self,
        stream: &StreamInfo,
        frame: u64,
        pts_ms: f64,
        faces: &mut [FaceRecord],
        predictions: &[Option<Prediction>],
    ) -> Vec<TrackRecord> {
        if self.streams.len() <= stream.index {
            self.streams.resize_with(stream.index + 1, || None);
        }
        let slot = &mut self.streams[stream.index];
        let tracks = slot.get_or_insert_with(|| StreamTracks {
            id: stream.id.clone(),
            uri: stream.uri.clone(),
            tracker: Tracker::new(self.config.clone()).with_detect_every(self.detect_every),
            people: HashMap::new(),
            counted: 0,
        });
        let detections: Vec<Detection> = faces
            .iter()
            .map(|f| Detection {
                bbox: f.face.bbox,
                score: f.face.score,
            })
            .collect();
        let update = tracks.tracker.update(pts_ms, &detections);
        for (i, (face, &id)) in faces.iter_mut().zip(&update.ids).enumerate() {
            let person = tracks.people.entry(id).or_insert_with(|| Person {
                first_frame: frame,
                last_frame: frame,
                first_pts_ms: pts_ms,
                last_pts_ms: pts_ms,
                frames: 0,
                estimate: Estimate::default(),
            });
            person.last_frame = frame;
            person.last_pts_ms = pts_ms;
            person.frames += 1;
            if let Some(Some(p)) = predictions.get(i) {
                person
                    .estimate
                    .add(p, face_weight(face.face.bbox, face.face.score));
            }
            face.track_id = Some(id);
            if let (Some((spec, grouping)), Some(p)) = (&self.attributes, person.estimate.current())
            {
                face.attributes = Attributes::of(&p, spec, *grouping);
            }
        }
        let ended = update.ended;
        ended
            .into_iter()
            .filter_map(|e| {
                let person = tracks.people.remove(&e.id)?;
                e.confirmed.then(|| {
                    tracks.counted += 1;
                    record(&tracks.id, &tracks.uri, e.id, person, &self.attributes)
                })
            })
            .collect()
    }

    /// Ends every track of every stream (end of the run): the records of the people among them.
    pub fn finish(&mut self) -> Vec<TrackRecord> {
        (0..self.streams.len())
            .flat_map(|i| self.finish_stream(i))
            .collect()
    }

    /// Ends every track of the stream at `index` (it ended): the records of its people.
    pub fn finish_stream(&mut self, index: usize) -> Vec<TrackRecord> {
        let Some(Some(tracks)) = self.streams.get_mut(index) else {
            return Vec::new();
        };
        let mut ended = tracks.tracker.finish();
        ended.sort_by_key(|e| e.id);
        let mut records = Vec::new();
        for e in ended {
            if let Some(person) = tracks.people.remove(&e.id)
                && e.confirmed
            {
                tracks.counted += 1;
                records.push(record(
                    &tracks.id,
                    &tracks.uri,
                    e.id,
                    person,
                    &self.attributes,
                ));
            }
        }
        records
    }

    /// Confirmed tracks of stream `index` alive now (in view, or lost for a moment).
    pub fn in_view(&self, index: usize) -> u64 {
        self.streams
            .get(index)
            .and_then(|s| s.as_ref())
            .map_or(0, |s| {
                s.tracker
                    .live_tracks()
                    .filter(|(_, state)| *state != super::TrackState::Tentative)
                    .count() as u64
            })
    }

    /// People (confirmed tracks that ended) of the stream at `index` so far.
    pub fn people(&self, index: usize) -> u64 {
        self.streams
            .get(index)
            .and_then(|s| s.as_ref())
            .map_or(0, |s| s.counted)
    }
}

fn record(
    stream: &str,
    source: &str,
    track_id: u64,
    person: Person,
    attributes: &Option<(ModelSpec, AgeGrouping)>,
) -> TrackRecord {
    let attributes = attributes
        .as_ref()
        .zip(person.estimate.current())
        .map(|((spec, grouping), p)| Attributes::of(&p, spec, *grouping))
        .unwrap_or_default();
    TrackRecord {
        kind: RecordKind::Track,
        stream: stream.to_string(),
        source: source.to_string(),
        track_id,
        first_frame: person.first_frame,
        last_frame: person.last_frame,
        first_pts_ms: person.first_pts_ms,
        last_pts_ms: person.last_pts_ms,
        frames: person.frames,
        attributes,
    }
}
