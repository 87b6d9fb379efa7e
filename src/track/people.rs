//! Tracks turned into people: each stream's [`Tracker`] run over its frames in decode order, each
//! face given its track id and its track's steady attributes, and a [`TrackRecord`] for every
//! confirmed track when it ends.

use std::collections::HashMap;

use super::estimate::{Estimate, readability};
use super::evidence::shows_a_face;
use super::second::{self, SecondReads};
use super::{Detection, TrackConfig, Tracker};
use crate::model::readout::Prediction;
use crate::record::{FaceRecord, Readout, RecordKind, TrackRecord};
use crate::sources::StreamInfo;

/// What is known of one track so far.
#[derive(Debug, Clone)]
struct Person {
    first_frame: u64,
    last_frame: u64,
    first_pts_ms: f64,
    last_pts_ms: f64,
    frames: u64,
    /// Frames that showed a face clearly ([`shows_a_face`]).
    face_frames: u32,
    estimate: Estimate,
    /// What the second reader of gender has read of this track.
    second: SecondReads,
}

impl Person {
    /// Whether the track has shown a face in enough frames to be a person.
    fn is_person(&self, min_face_frames: u32) -> bool {
        self.face_frames >= min_face_frames
    }
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
    /// How the attribute model's readings are read out, when attributes are on.
    attributes: Option<Readout>,
    detect_every: u32,
    /// Where snapshots of people go (their track records name them), when they are written.
    snapshots: Option<std::path::PathBuf>,
}

impl People {
    pub fn new(config: TrackConfig, attributes: Option<Readout>) -> Self {
        Self {
            config,
            streams: Vec::new(),
            attributes,
            detect_every: 1,
            snapshots: None,
        }
    }

    /// Track records name each person's snapshot in `dir` (see `sinks::snapshots`).
    pub fn with_snapshots(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.snapshots = dir;
        self
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
        // Tracks the tracker has confirmed (seen on `confirm_hits` frames) by now.
        let established: std::collections::HashSet<u64> = tracks
            .tracker
            .live_tracks()
            .filter(|(_, state)| *state != super::TrackState::Tentative)
            .map(|(id, _)| id)
            .collect();
        for (i, (face, &id)) in faces.iter_mut().zip(&update.ids).enumerate() {
            let person = tracks.people.entry(id).or_insert_with(|| Person {
                first_frame: frame,
                last_frame: frame,
                first_pts_ms: pts_ms,
                last_pts_ms: pts_ms,
                frames: 0,
                face_frames: 0,
                estimate: Estimate::default(),
                second: SecondReads::default(),
            });
            person.last_frame = frame;
            person.last_pts_ms = pts_ms;
            person.frames += 1;
            if shows_a_face(&face.face) {
                person.face_frames = person.face_frames.saturating_add(1);
            }
            face.confirmed =
                Some(established.contains(&id) && person.is_person(self.config.min_face_frames));
            if let Some(Some(p)) = predictions.get(i) {
                person.estimate.add(p, readability(&face.face));
            }
            face.track_id = Some(id);
            if let (Some(readout), Some(p)) = (&self.attributes, person.estimate.current()) {
                face.attributes = readout.attributes(&p);
            }
        }
        let ended = update.ended;
        let min_face_frames = self.config.min_face_frames;
        ended
            .into_iter()
            .filter_map(|e| {
                let person = tracks.people.remove(&e.id)?;
                (e.confirmed && person.is_person(min_face_frames)).then(|| {
                    tracks.counted += 1;
                    record(&tracks.id, &tracks.uri, e.id, person, &self.attributes)
                        .with_snapshot(self.snapshots.as_deref())
                })
            })
            .collect()
    }

    /// The faces of this frame of stream `index` (after [`People::frame`]) that the second
    /// reader of gender should read: people's clear faces, by the rule of [`second`], the most
    /// readable first, at most [`second::MAX_PER_FRAME`].
    pub fn second_reading_wanted(
        &self,
        index: usize,
        pts_ms: f64,
        faces: &[FaceRecord],
    ) -> Vec<usize> {
        let Some(Some(tracks)) = self.streams.get(index) else {
            return Vec::new();
        };
        let mut wanted: Vec<(usize, f64)> = faces
            .iter()
            .enumerate()
            .filter(|(_, f)| f.confirmed == Some(true))
            .filter_map(|(i, f)| {
                let person = tracks.people.get(&f.track_id?)?;
                person.second.wants(&f.face, pts_ms).map(|w| (i, w))
            })
            .collect();
        wanted.sort_by(|a, b| b.1.total_cmp(&a.1));
        wanted.truncate(second::MAX_PER_FRAME);
        wanted.into_iter().map(|(i, _)| i).collect()
    }

    /// The second reader's probability that each face of `wanted` (from
    /// [`People::second_reading_wanted`]) is a man's (`None`: no reading): added to its track's
    /// estimate, and the face's attributes read out again.
    pub fn add_second_readings(
        &mut self,
        index: usize,
        pts_ms: f64,
        faces: &mut [FaceRecord],
        wanted: &[usize],
        male: &[Option<f32>],
    ) {
        let Some(Some(tracks)) = self.streams.get_mut(index) else {
            return;
        };
        for (&i, male) in wanted.iter().zip(male) {
            let Some(face) = faces.get_mut(i) else {
                continue;
            };
            let Some(person) = face.track_id.and_then(|id| tracks.people.get_mut(&id)) else {
                continue;
            };
            let weight = readability(&face.face);
            // A face that gave no reading counts as read: it is not tried again and again.
            person.second.read(weight, pts_ms);
            if let Some(male) = male {
                person.estimate.add_second_male(*male, weight);
            }
            if let (Some(readout), Some(p)) = (&self.attributes, person.estimate.current()) {
                face.attributes = readout.attributes(&p);
            }
        }
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
                && person.is_person(self.config.min_face_frames)
            {
                tracks.counted += 1;
                records.push(
                    record(&tracks.id, &tracks.uri, e.id, person, &self.attributes)
                        .with_snapshot(self.snapshots.as_deref()),
                );
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
                    .filter(|(id, state)| {
                        *state != super::TrackState::Tentative
                            && s.people
                                .get(id)
                                .is_some_and(|p| p.is_person(self.config.min_face_frames))
                    })
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
    attributes: &Option<Readout>,
) -> TrackRecord {
    let attributes = attributes
        .as_ref()
        .zip(person.estimate.current())
        .map(|(readout, p)| readout.attributes(&p))
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
        snapshot: None,
    }
}

impl TrackRecord {
    /// Names the person's snapshot in `dir`, when snapshots are written.
    fn with_snapshot(mut self, dir: Option<&std::path::Path>) -> Self {
        self.snapshot = dir.map(|d| {
            crate::record::snapshot_path(d, &self.stream, self.track_id)
                .display()
                .to_string()
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Face;

    fn stream() -> StreamInfo {
        StreamInfo {
            id: "0".into(),
            index: 0,
            uri: "testsrc://x".into(),
            live: false,
        }
    }

    /// A face at `x`: with a face's landmarks (`clear`) or with all five on one spot, as on a
    /// neck O-Net is sure of.
    fn face(x: f32, clear: bool) -> FaceRecord {
        let landmarks = if clear {
            [
                [x + 30.0, 45.0],
                [x + 70.0, 45.0],
                [x + 50.0, 70.0],
                [x + 35.0, 95.0],
                [x + 65.0, 95.0],
            ]
        } else {
            [[x + 50.0, 60.0]; 5]
        };
        FaceRecord::detection(Face {
            bbox: [x, 0.0, x + 100.0, 120.0],
            score: 0.99,
            landmarks,
        })
    }

    /// Two tracks side by side for 10 frames: the one that shows a face becomes a person at its
    /// third clear frame; the other is never confirmed and leaves no record.
    #[test]
    fn only_a_track_that_shows_a_face_becomes_a_person() {
        let mut people = People::new(TrackConfig::default(), None);
        let info = stream();
        let mut confirmed = Vec::new();
        for frame in 0..10 {
            let mut faces = vec![face(0.0, true), face(300.0, false)];
            people.frame(&info, frame, frame as f64 * 40.0, &mut faces, &[None, None]);
            confirmed.push((faces[0].confirmed, faces[1].confirmed));
        }
        assert_eq!(confirmed[1], (Some(false), Some(false)));
        assert_eq!(confirmed[2], (Some(true), Some(false)));
        assert_eq!(confirmed[9], (Some(true), Some(false)));
        assert_eq!(people.in_view(0), 1);
        let records = people.finish();
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].first_frame, records[0].frames), (0, 10));
        assert_eq!(people.people(0), 1);
    }

    /// The second reader reads a person's first clear face once the track is a person, not a
    /// track that never shows a face; its reading moves the person's gender, in the face's
    /// attributes and in the track record.
    #[test]
    fn a_person_is_read_again_by_the_second_reader() {
        use crate::model::AgeGrouping;
        use crate::model::spec::{ModelSpec, Task};
        let spec = ModelSpec::current(&Task::ALL);
        let readout = Readout::plain(spec, AgeGrouping::Five);
        let mut people = People::new(TrackConfig::default(), Some(readout));
        let info = stream();
        // The model is sure of "female" (logits 0, 2: P(male) 0.12).
        let female =
            Prediction::from_logits(&[0.0; crate::model::FINE_AGE_BINS], &[0.0, 2.0], &[0.0; 5]);
        let mut asked = Vec::new();
        for frame in 0..4 {
            let pts_ms = frame as f64 * 40.0;
            let mut faces = vec![face(0.0, true), face(300.0, false)];
            let predictions = vec![Some(female.clone()), Some(female.clone())];
            people.frame(&info, frame, pts_ms, &mut faces, &predictions);
            let wanted = people.second_reading_wanted(0, pts_ms, &faces);
            people.add_second_readings(
                0,
                pts_ms,
                &mut faces,
                &wanted,
                &vec![Some(1.0); wanted.len()],
            );
            asked.push(wanted);
            if frame == 3 {
                let gender = faces[0].attributes.gender.as_ref().unwrap();
                assert_eq!(gender.label, "male", "mean of 0.12 and 1.0");
            }
        }
        // Confirmed at the third frame (index 2), read then, and not at once again.
        assert_eq!(asked, [vec![], vec![], vec![0], vec![]]);
        let records = people.finish();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].attributes.gender.as_ref().unwrap().label, "male");
    }

    /// With `min_face_frames` 0, every confirmed track is a person, as before.
    #[test]
    fn without_the_evidence_rule_every_confirmed_track_is_a_person() {
        let config = TrackConfig {
            min_face_frames: 0,
            ..TrackConfig::default()
        };
        let mut people = People::new(config, None);
        let info = stream();
        for frame in 0..10 {
            let mut faces = vec![face(0.0, true), face(300.0, false)];
            people.frame(&info, frame, frame as f64 * 40.0, &mut faces, &[None, None]);
            // Confirmed by the tracker at the third hit.
            let confirmed = Some(frame >= 2);
            assert_eq!(
                (faces[0].confirmed, faces[1].confirmed),
                (confirmed, confirmed)
            );
        }
        assert_eq!(people.finish().len(), 2);
    }
}
