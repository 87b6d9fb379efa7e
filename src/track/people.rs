//! Tracks turned into people: each stream's [`Tracker`] run over its frames in decode order, each
//! face given its track id and its track's steady attributes, and a [`TrackRecord`] for every
//! confirmed track when it ends.

use std::collections::HashMap;

use super::TrackState;
use super::appearance::{Appearance, DIFFERENT_PERSON, SAME_PERSON, SAME_PERSON_AWAY, best_match};
use super::estimate::{Estimate, readability};
use super::evidence::shows_a_face;
use super::second::{self, SecondReads};
use super::{Detection, TrackConfig, Tracker};
use crate::attributes::faceres::FaceReading;
use crate::model::readout::Prediction;
use crate::record::{FaceRecord, Readout, RecordKind, TrackEvent, TrackRecord};
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
    /// What the second reader of gender and race has read of this track.
    second: SecondReads,
    /// What the person looks like, from the second reader's reads.
    appearance: Appearance,
    /// The attributes last said of the person's faces (labels keep to them: see
    /// [`Readout::attributes_after`]).
    said: crate::record::Attributes,
    /// How many times the track's face was compared with the lost people's (see
    /// [`People::reassociation_wanted`]), and the frame of the last time.
    compared: u32,
    compared_frame: u64,
    /// The face's last box.
    last_bbox: [f32; 4],
    /// When the person was last announced (`track_start`, then `track_update`), ms.
    announced_ms: Option<f64>,
}

impl Person {
    /// A track first seen at `frame`, `pts_ms`.
    fn new(frame: u64, pts_ms: f64) -> Self {
        Self {
            first_frame: frame,
            last_frame: frame,
            first_pts_ms: pts_ms,
            last_pts_ms: pts_ms,
            frames: 0,
            face_frames: 0,
            estimate: Estimate::default(),
            second: SecondReads::default(),
            appearance: Appearance::default(),
            said: Default::default(),
            compared: 0,
            compared_frame: 0,
            last_bbox: [0.0; 4],
            announced_ms: None,
        }
    }

    /// The track `id`'s face `face` at `frame`, `pts_ms` (the track confirmed by the tracker when
    /// `established`), with the attribute model's `prediction` of it: counted, added to the
    /// estimate, and the face given the track's id, whether it is a person's (at least
    /// `min_face_frames` clear faces) and the attributes `readout` says now.
    fn sees(
        &mut self,
        face: &mut FaceRecord,
        (id, established): (u64, bool),
        (frame, pts_ms): (u64, f64),
        prediction: Option<&Prediction>,
        (min_face_frames, readout): (u32, Option<&Readout>),
    ) {
        self.last_frame = frame;
        self.last_pts_ms = pts_ms;
        self.last_bbox = face.face.bbox;
        self.frames += 1;
        if shows_a_face(&face.face) {
            self.face_frames = self.face_frames.saturating_add(1);
        }
        face.confirmed = Some(established && self.is_person(min_face_frames));
        if let Some(p) = prediction {
            self.estimate.add(p, readability(&face.face));
        }
        face.track_id = Some(id);
        if let Some(now) = self.attributes_now(readout) {
            face.attributes = now.clone();
            self.said = now;
        }
    }

    /// The person's attributes as `readout` says them now, kept to what was said before
    /// (hysteresis); `None` without a readout or an estimate yet.
    fn attributes_now(&self, readout: Option<&Readout>) -> Option<crate::record::Attributes> {
        let p = self.estimate.current()?;
        Some(readout?.attributes_after(&p, self.estimate.read_twice(), &self.said))
    }

    /// Whether the track has shown a face in enough frames to be a person.
    fn is_person(&self, min_face_frames: u32) -> bool {
        self.face_frames >= min_face_frames
    }
}

#[derive(Debug)]
struct StreamTracks {
    id: String,
    uri: String,
    /// The stream's clock (see [`StreamInfo::clock_origin_ms`]), for track records' times.
    clock_origin_ms: std::sync::Arc<std::sync::OnceLock<f64>>,
    tracker: Tracker,
    people: HashMap<u64, Person>,
    /// Confirmed tracks that ended so far.
    counted: u64,
    /// The people of the tracks found again by place at the last frame, whose appearance is
    /// known, as they were before it.
    refound: HashMap<u64, Person>,
    /// New tracks recognised as a lost person since [`People::take_renames`] last took them.
    renamed: Vec<Rename>,
}

/// A new track recognised as a lost person (see [`People::reassociate`]): its faces already
/// written out under its own id, `from`, are the person's, `to`. A record still held back (see
/// `TrackConfig::settle_ms`) can be corrected to say so.
#[derive(Debug, Clone, PartialEq)]
pub struct Rename {
    pub from: u64,
    pub to: u64,
    /// Whether the person's faces count as a person's (`confirmed`).
    pub confirmed: bool,
    /// What is said of the person now.
    pub attributes: crate::record::Attributes,
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
    /// A second reader reads faces, so a new track may still turn out to be a lost person.
    recognises: bool,
    /// `track_start` and `track_update` records not yet taken ([`People::take_events`]).
    events: Vec<TrackEvent>,
}

impl People {
    pub fn new(config: TrackConfig, attributes: Option<Readout>) -> Self {
        Self {
            config,
            streams: Vec::new(),
            attributes,
            detect_every: 1,
            snapshots: None,
            recognises: false,
            events: Vec::new(),
        }
    }

    /// A second reader reads faces (see [`People::reassociate`]): a new track is announced only
    /// once it can no longer turn out to be a lost person.
    pub fn with_recognition(mut self, recognises: bool) -> Self {
        self.recognises = recognises;
        self
    }

    /// The `track_start` and `track_update` records since the last call, in order: they go out
    /// before the record of the frame they were said at.
    pub fn take_events(&mut self) -> Vec<TrackEvent> {
        std::mem::take(&mut self.events)
    }

    /// Announces the people of this frame of stream `index` (after every step that may change
    /// its faces' tracks): `track_start` for a track that became a person, `track_update` every
    /// `update_every_s` while a person stays in view. A new track that may still be recognised as
    /// a lost person (see [`People::reassociate`]) is not a person yet: its face is marked
    /// unconfirmed until it can no longer be.
    pub fn announce(&mut self, index: usize, frame: u64, pts_ms: f64, faces: &mut [FaceRecord]) {
        let update_ms = self.config.update_every_s * 1000.0;
        let recognises = self.recognises;
        let Some(Some(tracks)) = self.streams.get_mut(index) else {
            return;
        };
        for face in faces.iter_mut() {
            let Some(id) = face.track_id.filter(|_| face.confirmed == Some(true)) else {
                continue;
            };
            let Some(p) = tracks.people.get(&id) else {
                continue;
            };
            let kind = match p.announced_ms {
                None => {
                    if recognises && may_be_lost_person(tracks, p, face.face.bbox) {
                        face.confirmed = Some(false);
                        continue;
                    }
                    RecordKind::TrackStart
                }
                Some(at) if update_ms > 0.0 && pts_ms - at >= update_ms => RecordKind::TrackUpdate,
                Some(_) => continue,
            };
            let event = event(tracks, id, p, kind, (frame, pts_ms), &face.attributes);
            if let Some(p) = tracks.people.get_mut(&id) {
                p.announced_ms = Some(pts_ms);
            }
            self.events.push(event);
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

    /// `stream`'s frame at `pts_ms` was searched in full (see [`Tracker::full_search_at`]).
    pub fn full_search_at(&mut self, stream: &StreamInfo, pts_ms: f64) {
        tracks_of(&mut self.streams, &self.config, self.detect_every, stream)
            .tracker
            .full_search_at(pts_ms);
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
        let tracks = tracks_of(&mut self.streams, &self.config, self.detect_every, stream);
        let detections: Vec<Detection> = faces
            .iter()
            .map(|f| Detection {
                bbox: f.face.bbox,
                score: f.face.score,
            })
            .collect();
        let update = tracks.tracker.update(pts_ms, &detections);
        // People found again by place whose face is known: as they were, in case the face found
        // is someone else's (see `verify`).
        tracks.refound = tracks
            .tracker
            .refound()
            .filter_map(|id| {
                let person = tracks.people.get(&id)?;
                person.appearance.known().then(|| (id, person.clone()))
            })
            .collect();
        // Tracks the tracker has confirmed (seen on `confirm_hits` frames) by now.
        let established: std::collections::HashSet<u64> = tracks
            .tracker
            .live_tracks()
            .filter(|(_, state)| *state != TrackState::Tentative)
            .map(|(id, _)| id)
            .collect();
        for (i, (face, &id)) in faces.iter_mut().zip(&update.ids).enumerate() {
            tracks
                .people
                .entry(id)
                .or_insert_with(|| Person::new(frame, pts_ms))
                .sees(
                    face,
                    (id, established.contains(&id)),
                    (frame, pts_ms),
                    predictions.get(i).and_then(Option::as_ref),
                    (self.config.min_face_frames, self.attributes.as_ref()),
                );
        }
        let ended = update.ended;
        let min_face_frames = self.config.min_face_frames;
        ended
            .into_iter()
            .filter_map(|e| {
                let person = tracks.people.remove(&e.id)?;
                (e.confirmed && person.is_person(min_face_frames)).then(|| {
                    tracks.counted += 1;
                    announce_unannounced(tracks, e.id, &person, &self.attributes, &mut self.events);
                    record(tracks, e.id, person, &self.attributes)
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

    /// The second reader's reading of each face of `wanted` (from
    /// [`People::second_reading_wanted`]; `None`: no reading): its gender and race added to its track's
    /// estimate, its descriptor to the person's appearance, and the face's attributes read out
    /// again.
    pub fn add_second_readings(
        &mut self,
        index: usize,
        pts_ms: f64,
        faces: &mut [FaceRecord],
        wanted: &[usize],
        readings: &[Option<FaceReading>],
    ) {
        let Some(Some(tracks)) = self.streams.get_mut(index) else {
            return;
        };
        for (&i, reading) in wanted.iter().zip(readings) {
            let Some(face) = faces.get_mut(i) else {
                continue;
            };
            let Some(id) = face.track_id else {
                continue;
            };
            let Some(person) = tracks.people.get_mut(&id) else {
                continue;
            };
            let weight = readability(&face.face);
            // A face that gave no reading counts as read: it is not tried again and again.
            person.second.read(weight, pts_ms);
            if let Some(reading) = reading {
                person.estimate.add_second_male(reading.male, weight);
                if let Some(race) = &reading.race {
                    person.estimate.add_second_race(race, weight);
                }
                person.appearance.add(&reading.descriptor);
                // A person who can be recognised waits out of view to be (`reentry_ms`).
                if person.appearance.known() {
                    tracks.tracker.keep_for_reentry(id);
                }
            }
            if let Some(now) = person.attributes_now(self.attributes.as_ref()) {
                face.attributes = now.clone();
                person.said = now;
            }
        }
    }

    /// The faces of this frame of stream `index` (after [`People::frame`]) that were given to a
    /// person found again by place after a while unseen, whose face is known: the second reader
    /// should read them, to check that they are that person's ([`People::verify`]); at most
    /// [`MAX_COMPARED_PER_FRAME`].
    pub fn verification_wanted(&self, index: usize, faces: &[FaceRecord]) -> Vec<usize> {
        let Some(Some(tracks)) = self.streams.get(index) else {
            return Vec::new();
        };
        faces
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                f.track_id
                    .is_some_and(|id| tracks.refound.contains_key(&id))
            })
            .map(|(i, _)| i)
            .take(MAX_COMPARED_PER_FRAME)
            .collect()
    }

    /// The second reader's reading of each face of `wanted` (from
    /// [`People::verification_wanted`]), at `frame`, `pts_ms`, with the attribute model's
    /// `predictions` of this frame's faces: a face clearly unlike the person it was given to
    /// ([`DIFFERENT_PERSON`]) is someone else's, who came out where the person was expected. The
    /// person goes back to lost as they were, to be found again by face only, and the face starts
    /// a track of its own (which may then be recognised as someone lost, see
    /// [`People::reassociate`]).
    pub fn verify(
        &mut self,
        index: usize,
        (frame, pts_ms): (u64, f64),
        faces: &mut [FaceRecord],
        predictions: &[Option<Prediction>],
        (wanted, readings): (&[usize], &[Option<FaceReading>]),
    ) {
        let min_face_frames = self.config.min_face_frames;
        let Some(Some(tracks)) = self.streams.get_mut(index) else {
            return;
        };
        for (&i, reading) in wanted.iter().zip(readings) {
            let (Some(face), Some(reading)) = (faces.get_mut(i), reading) else {
                continue;
            };
            let Some(id) = face.track_id else {
                continue;
            };
            let Some(before) = tracks.refound.remove(&id) else {
                continue;
            };
            // A reading that cannot be compared (a crop at the frame's edge may give none worth
            // the name) says nothing against the person.
            match before.appearance.compare(&reading.descriptor) {
                Some(similarity) if similarity < DIFFERENT_PERSON => {}
                _ => continue,
            }
            let Some(new_id) = tracks.tracker.undo_refind(id) else {
                continue;
            };
            tracks.people.insert(id, before);
            let established = tracks
                .tracker
                .live_tracks()
                .any(|(t, state)| t == new_id && state != TrackState::Tentative);
            // The face is seen afresh by its own track: nothing the person said stays on it.
            face.attributes = Default::default();
            let mut person = Person::new(frame, pts_ms);
            person.sees(
                face,
                (new_id, established),
                (frame, pts_ms),
                predictions.get(i).and_then(Option::as_ref),
                (min_face_frames, self.attributes.as_ref()),
            );
            tracks.people.insert(new_id, person);
        }
    }

    /// The faces of this frame of stream `index` (after [`People::frame`]) to compare with the
    /// people lost now: faces scored at least [`COMPARE_SCORE`], of tracks in their first
    /// [`COMPARE_WITHIN_FRAMES`] frames (a face coming out from behind another shows clearly
    /// only after a few), compared fewer than [`MAX_COMPARISONS`] times,
    /// while some lost person's appearance is known; at most [`MAX_COMPARED_PER_FRAME`].
    pub fn reassociation_wanted(&self, index: usize, faces: &[FaceRecord]) -> Vec<usize> {
        let Some(Some(tracks)) = self.streams.get(index) else {
            return Vec::new();
        };
        faces
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                let Some(p) = f.track_id.and_then(|id| tracks.people.get(&id)) else {
                    return false;
                };
                // Comparisons spread over the first frames: nearly the same face twice says
                // nothing new.
                let due =
                    p.compared == 0 || p.last_frame >= p.compared_frame + COMPARE_EVERY_FRAMES;
                // Announced as a person of their own, a track stays one (its `track_start` is
                // out; see `announce`).
                p.announced_ms.is_none()
                    && p.compared < MAX_COMPARISONS
                    && p.frames <= COMPARE_WITHIN_FRAMES
                    && due
                    && f.face.score >= COMPARE_SCORE
                    && !candidates(tracks, p.first_frame, f.face.bbox).is_empty()
            })
            .map(|(i, _)| i)
            .take(MAX_COMPARED_PER_FRAME)
            .collect()
    }

    /// The second reader's reading of each face of `wanted` (from
    /// [`People::reassociation_wanted`]): a face that looks like one lost person (see
    /// [`super::appearance`]), and starts near where that person was expected, is theirs again:
    /// the lost track takes over the new one, the face gets the person's id and attributes.
    pub fn reassociate(
        &mut self,
        index: usize,
        pts_ms: f64,
        faces: &mut [FaceRecord],
        wanted: &[usize],
        readings: &[Option<FaceReading>],
    ) {
        let min_face_frames = self.config.min_face_frames;
        let Some(Some(tracks)) = self.streams.get_mut(index) else {
            return;
        };
        for (&i, reading) in wanted.iter().zip(readings) {
            let Some(face) = faces.get_mut(i) else {
                continue;
            };
            let Some(new_id) = face.track_id else {
                continue;
            };
            let Some(new_first_frame) = tracks.people.get_mut(&new_id).map(|p| {
                p.compared += 1;
                p.compared_frame = p.last_frame;
                p.first_frame
            }) else {
                continue;
            };
            let Some(reading) = reading else {
                continue;
            };
            let lost: Vec<(u64, &Appearance, f32)> =
                candidates(tracks, new_first_frame, face.face.bbox)
                    .into_iter()
                    .filter_map(|(id, least)| {
                        Some((id, &tracks.people.get(&id)?.appearance, least))
                    })
                    .collect();
            if tracing::enabled!(tracing::Level::DEBUG) {
                let alike: Vec<(u64, f32, f32)> = lost
                    .iter()
                    .map(|(id, a, least)| (*id, a.similarity(&reading.descriptor), *least))
                    .collect();
                tracing::debug!(
                    pts_ms,
                    new_id,
                    "compared with the people lost (id, similarity, least): {alike:?}"
                );
            }
            let Some(lost_id) = best_match(lost, &reading.descriptor) else {
                continue;
            };
            if !tracks.tracker.take_over(lost_id, new_id, pts_ms) {
                continue;
            }
            let Some(new) = tracks.people.remove(&new_id) else {
                continue;
            };
            let Some(person) = tracks.people.get_mut(&lost_id) else {
                continue;
            };
            person.last_frame = new.last_frame;
            person.last_pts_ms = new.last_pts_ms;
            person.last_bbox = new.last_bbox;
            person.frames += new.frames;
            person.face_frames = person.face_frames.saturating_add(new.face_frames);
            person.estimate.absorb(&new.estimate);
            person.appearance.absorb(&new.appearance);
            person.appearance.add(&reading.descriptor);
            // Final: a person whose track took another's is not compared again.
            person.compared = MAX_COMPARISONS;
            face.track_id = Some(lost_id);
            face.confirmed = Some(person.is_person(min_face_frames));
            if let Some(now) = person.attributes_now(self.attributes.as_ref()) {
                face.attributes = now.clone();
                person.said = now;
            }
            tracks.renamed.push(Rename {
                from: new_id,
                to: lost_id,
                // Not before the person's `track_start` (a person not yet announced is, at
                // this frame).
                confirmed: person.is_person(min_face_frames) && person.announced_ms.is_some(),
                attributes: person.said.clone(),
            });
        }
    }

    /// The new tracks of the stream at `index` recognised as lost people since the last call.
    pub fn take_renames(&mut self, index: usize) -> Vec<Rename> {
        match self.streams.get_mut(index) {
            Some(Some(tracks)) => std::mem::take(&mut tracks.renamed),
            _ => Vec::new(),
        }
    }

    /// Whether a track of the stream at `index` may still turn out to be a lost person: a new
    /// track, not yet announced, still to be compared, near where a lost person was expected
    /// (or while a person is away). Its faces so far carry its own id; they may be renamed.
    pub fn settling(&self, index: usize) -> bool {
        let Some(Some(tracks)) = self.streams.get(index) else {
            return false;
        };
        self.recognises
            && tracks.tracker.live_tracks().any(|(id, _)| {
                tracks
                    .people
                    .get(&id)
                    .is_some_and(|p| may_be_lost_person(tracks, p, p.last_bbox))
            })
    }

    /// How long a file's frame records may wait for a new track to settle (see [`Self::settling`]), ms.
    pub fn settle_ms(&self) -> f64 {
        self.config.settle_ms
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
                announce_unannounced(tracks, e.id, &person, &self.attributes, &mut self.events);
                records.push(
                    record(tracks, e.id, person, &self.attributes)
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
                        matches!(state, TrackState::Confirmed | TrackState::Lost)
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

/// A new track's first frames in which its face may be compared with the people lost (1 s at
/// 25 fps).
pub const COMPARE_WITHIN_FRAMES: u64 = 25;
/// Comparisons of one new track at most, and the frames between two of them.
pub const MAX_COMPARISONS: u32 = 5;
pub const COMPARE_EVERY_FRAMES: u64 = 3;
/// Least detection score of a face compared: a face coming out from behind another is compared
/// as soon as it is surely a face, before it shows clearly (each frame before, written under the
/// new id, is an id switch for whoever reads the frame records).
pub const COMPARE_SCORE: f32 = 0.9;
/// Faces of one frame compared at most (each is one more read of the second reader).
pub const MAX_COMPARED_PER_FRAME: usize = 2;
/// How far from where a lost person was expected their face may come back, in face widths.
const REAPPEAR_WITHIN_WIDTHS: f32 = 4.0;

/// The people a face of a track that started at `first_frame`, at `bbox`, may be (id, least
/// similarity): people whose appearance is known and who were last seen before that track
/// started (two people seen together are two people), lost a moment ago and expected near it, or
/// away (anywhere, but only when more alike).
fn candidates(tracks: &StreamTracks, first_frame: u64, bbox: [f32; 4]) -> Vec<(u64, f32)> {
    tracks
        .tracker
        .live_tracks()
        .filter(|(id, _)| {
            tracks
                .people
                .get(id)
                .is_some_and(|p| p.appearance.known() && p.last_frame < first_frame)
        })
        .filter_map(|(id, state)| match state {
            TrackState::Lost => {
                let expected = tracks.tracker.predicted_box(id)?;
                near(expected, bbox).then_some((id, SAME_PERSON))
            }
            TrackState::Away => Some((id, SAME_PERSON_AWAY)),
            _ => None,
        })
        .collect()
}

/// Whether `p`, a track's person with their face at `bbox`, may still turn out to be a person
/// lost (see [`People::reassociate`]): not announced, still to be compared, and someone lost may be
/// them ([`candidates`]).
fn may_be_lost_person(tracks: &StreamTracks, p: &Person, bbox: [f32; 4]) -> bool {
    p.announced_ms.is_none()
        && p.compared < MAX_COMPARISONS
        && p.frames <= COMPARE_WITHIN_FRAMES
        && !candidates(tracks, p.first_frame, bbox).is_empty()
}

/// Whether `face` is near enough to `expected` (a lost track's predicted box) to be that person.
fn near(expected: [f32; 4], face: [f32; 4]) -> bool {
    let centre = |b: [f32; 4]| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0];
    let (a, b) = (centre(expected), centre(face));
    let width = (expected[2] - expected[0]).max(face[2] - face[0]).max(1.0);
    (a[0] - b[0]).hypot(a[1] - b[1]) <= REAPPEAR_WITHIN_WIDTHS * width
}

/// A `kind` record of person `p` (track `id`) at `(frame, pts_ms)`, saying `attributes`.
fn event(
    tracks: &StreamTracks,
    id: u64,
    p: &Person,
    kind: RecordKind,
    (frame, pts_ms): (u64, f64),
    attributes: &crate::record::Attributes,
) -> TrackEvent {
    TrackEvent {
        kind,
        stream: tracks.id.clone(),
        source: tracks.uri.clone(),
        track_id: id,
        frame,
        pts_ms,
        time: tracks.time(pts_ms),
        first_frame: p.first_frame,
        first_pts_ms: p.first_pts_ms,
        first_time: tracks.time(p.first_pts_ms),
        frames: p.frames,
        bbox: p.last_bbox,
        attributes: attributes.clone(),
    }
}

/// A person whose track ends before they were announced (their track was still a candidate
/// for a lost person's, or the stream cut) gets their `track_start` now, at their last frame,
/// just before their track record.
fn announce_unannounced(
    tracks: &StreamTracks,
    id: u64,
    person: &Person,
    attributes: &Option<Readout>,
    events: &mut Vec<TrackEvent>,
) {
    if person.announced_ms.is_some() {
        return;
    }
    let said = person
        .attributes_now(attributes.as_ref())
        .unwrap_or_default();
    let at = (person.last_frame, person.last_pts_ms);
    events.push(event(tracks, id, person, RecordKind::TrackStart, at, &said));
}

impl StreamTracks {
    /// The clock time of `pts_ms` on this stream, when it has a clock.
    fn time(&self, pts_ms: f64) -> Option<String> {
        crate::sources::clock_time(&self.clock_origin_ms, pts_ms)
    }
}

fn record(
    tracks: &StreamTracks,
    track_id: u64,
    person: Person,
    attributes: &Option<Readout>,
) -> TrackRecord {
    let attributes = person
        .attributes_now(attributes.as_ref())
        .unwrap_or_default();
    TrackRecord {
        kind: RecordKind::Track,
        stream: tracks.id.clone(),
        source: tracks.uri.clone(),
        track_id,
        first_frame: person.first_frame,
        last_frame: person.last_frame,
        first_pts_ms: person.first_pts_ms,
        last_pts_ms: person.last_pts_ms,
        first_time: tracks.time(person.first_pts_ms),
        last_time: tracks.time(person.last_pts_ms),
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

/// `stream`'s tracks in `streams`, made on its first frame.
fn tracks_of<'a>(
    streams: &'a mut Vec<Option<StreamTracks>>,
    config: &TrackConfig,
    detect_every: u32,
    stream: &StreamInfo,
) -> &'a mut StreamTracks {
    if streams.len() <= stream.index {
        streams.resize_with(stream.index + 1, || None);
    }
    streams[stream.index].get_or_insert_with(|| StreamTracks {
        id: stream.id.clone(),
        uri: stream.uri.clone(),
        clock_origin_ms: stream.clock_origin_ms.clone(),
        tracker: Tracker::new(config.clone())
            .with_detect_every(stream.detect_every.unwrap_or(detect_every)),
        people: HashMap::new(),
        counted: 0,
        refound: HashMap::new(),
        renamed: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Face;

    fn stream() -> StreamInfo {
        StreamInfo {
            clock_origin_ms: Default::default(),
            id: "0".into(),
            index: 0,
            uri: "testsrc://x".into(),
            live: false,
            detect_every: None,
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
    /// track that never shows a face; its reading moves the person's gender and race, in the
    /// face's attributes and in the track record.
    #[test]
    fn a_person_is_read_again_by_the_second_reader() {
        use crate::model::AgeGrouping;
        use crate::model::spec::{ModelSpec, Task};
        let spec = ModelSpec::current(&Task::ALL);
        let readout = Readout::plain(spec, AgeGrouping::Five);
        let mut people = People::new(TrackConfig::default(), Some(readout));
        let info = stream();
        // The model is sure of "female" (logits 0, 2: P(male) 0.12), not of "asian" (0.405).
        let female = Prediction::from_logits(
            &[0.0; crate::model::FINE_AGE_BINS],
            &[0.0, 2.0],
            &[0.0, 0.0, 1.0, 0.0, 0.0],
        );
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
                &vec![
                    Some(FaceReading {
                        race: Some(vec![0.0, 0.0, 1.0, 0.0, 0.0]),
                        male: 1.0,
                        descriptor: vec![1.0, 0.0],
                    });
                    wanted.len()
                ],
            );
            let race = faces[0].attributes.race.clone().unwrap();
            if frame < 2 {
                assert!(
                    (race.prob - 0.405).abs() < 1e-3,
                    "the model alone: {race:?}"
                );
            }
            asked.push(wanted);
            if frame == 3 {
                let gender = faces[0].attributes.gender.as_ref().unwrap();
                assert_eq!(gender.label, "male", "mean of 0.12 and 1.0");
                assert_eq!(race.label, "asian");
                assert!(
                    (race.prob - 0.703).abs() < 1e-3,
                    "mean of 0.405 and 1: {race:?}"
                );
            }
        }
        // Confirmed at the third frame (index 2), read then, and not at once again.
        assert_eq!(asked, [vec![], vec![], vec![0], vec![]]);
        let records = people.finish();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].attributes.gender.as_ref().unwrap().label, "male");
        assert_eq!(records[0].attributes.race.as_ref().unwrap().label, "asian");
    }

    /// A person is announced once, on the frame their face is first confirmed, then every
    /// `update_every_s` while in view; a confirmed face is never without a `track_start` before
    /// it, and a track that ends unannounced gets its `track_start` just before its record.
    #[test]
    fn people_are_announced_when_they_become_people_and_while_in_view() {
        let config = TrackConfig {
            update_every_s: 0.1,
            ..TrackConfig::default()
        };
        let mut people = People::new(config, None);
        let info = stream();
        let mut said = Vec::new();
        for frame in 0..8 {
            let pts_ms = frame as f64 * 40.0;
            let mut faces = vec![face(0.0, true)];
            people.frame(&info, frame, pts_ms, &mut faces, &[None]);
            people.announce(0, frame, pts_ms, &mut faces);
            for e in people.take_events() {
                said.push((e.kind, e.frame, e.frames, e.first_frame));
            }
            if faces[0].confirmed == Some(true) {
                assert!(
                    !said.is_empty(),
                    "confirmed at {frame} before any track_start"
                );
            }
        }
        assert_eq!(
            said,
            [
                (RecordKind::TrackStart, 2, 3, 0),
                (RecordKind::TrackUpdate, 5, 6, 0),
            ]
        );
        // Without announcing (as when a track may still be a lost person), the end says it.
        let mut people = People::new(TrackConfig::default(), None);
        for frame in 0..5 {
            let mut faces = vec![face(0.0, true)];
            people.frame(&info, frame, frame as f64 * 40.0, &mut faces, &[None]);
        }
        let records = people.finish();
        let events = people.take_events();
        assert_eq!(records.len(), 1);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind, events[0].frame, events[0].track_id),
            (RecordKind::TrackStart, 4, records[0].track_id)
        );
    }

    /// A stream with a clock gives its track records clock times, on the frames' timeline.
    #[test]
    fn track_records_carry_the_streams_clock_time() {
        for origin in [None, Some(1_796_635_800_000.0)] {
            let mut people = People::new(TrackConfig::default(), None);
            let info = stream();
            if let Some(origin) = origin {
                info.clock_origin_ms.set(origin).unwrap();
            }
            for frame in 0..5 {
                let mut faces = vec![face(0.0, true)];
                people.frame(
                    &info,
                    frame,
                    1000.0 + frame as f64 * 40.0,
                    &mut faces,
                    &[None],
                );
            }
            let records = people.finish();
            let times = (records[0].first_time.clone(), records[0].last_time.clone());
            let want = origin.map(|_| {
                (
                    "2026-12-07T09:30:01.000Z".to_string(),
                    "2026-12-07T09:30:01.160Z".to_string(),
                )
            });
            assert_eq!((times.0.zip(times.1)), want);
        }
    }

    /// No face on `frames` (40 ms apart).
    fn out_of_view(people: &mut People, info: &StreamInfo, frames: std::ops::Range<u64>) {
        for frame in frames {
            people.frame(info, frame, frame as f64 * 40.0, &mut [], &[]);
        }
    }

    /// Anna, at x = 0 for frames 0–4 (40 ms apart), read by the second reader once a person
    /// (descriptor (1, 0)): her track id.
    fn anna_seen_and_read(people: &mut People, info: &StreamInfo) -> Option<u64> {
        let mut id = None;
        for frame in 0..5 {
            let pts_ms = frame as f64 * 40.0;
            let mut faces = vec![face(0.0, true)];
            people.frame(info, frame, pts_ms, &mut faces, &[None]);
            id = faces[0].track_id;
            let wanted = people.second_reading_wanted(0, pts_ms, &faces);
            let read = FaceReading {
                race: None,
                male: 0.0,
                descriptor: vec![1.0, 0.0],
            };
            let readings = vec![Some(read); wanted.len()];
            people.add_second_readings(0, pts_ms, &mut faces, &wanted, &readings);
        }
        id
    }

    /// Anna, known by face, is hidden for 200 ms; a face then comes out where she was and is
    /// given her track by place. Read, it is checked: hers, it stays hers; someone else's, Anna
    /// goes back to lost (her record keeps her frames only) and the face is someone new.
    #[test]
    fn a_face_found_where_a_lost_person_was_is_checked_by_face() {
        let run = |descriptor: Vec<f32>| {
            let mut people = People::new(TrackConfig::default(), None);
            let info = stream();
            let anna = anna_seen_and_read(&mut people, &info);
            out_of_view(&mut people, &info, 5..10);
            let mut faces = vec![face(10.0, true)];
            people.frame(&info, 10, 400.0, &mut faces, &[None]);
            assert_eq!(faces[0].track_id, anna, "found again by place");
            let wanted = people.verification_wanted(0, &faces);
            assert_eq!(wanted, [0]);
            let reading = FaceReading {
                race: None,
                male: 1.0,
                descriptor,
            };
            let readings = [Some(reading)];
            people.verify(0, (10, 400.0), &mut faces, &[None], (&wanted, &readings));
            assert!(
                people.verification_wanted(0, &faces).is_empty(),
                "checked once"
            );
            (anna, faces[0].clone(), people)
        };
        let (anna, face, mut people) = run(vec![0.9, 0.3]);
        assert_eq!(face.track_id, anna);
        let records = people.finish();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].last_frame, 10);
        let (anna, face, mut people) = run(vec![0.2, 1.0]);
        assert_ne!(face.track_id, anna);
        assert_eq!(face.confirmed, Some(false));
        // Anna is lost again, as before the face came: her record ends at frame 4.
        let records = people.finish();
        let hers: Vec<_> = records
            .iter()
            .filter(|r| Some(r.track_id) == anna)
            .collect();
        assert_eq!(hers.len(), 1);
        assert_eq!((hers[0].first_frame, hers[0].last_frame), (0, 4));
        assert_eq!(hers[0].frames, 5);
    }

    /// A person lost for a moment whose face comes back away from where the tracker expected it
    /// starts a new track; if it looks like them it is theirs again, else it stays someone new.
    #[test]
    fn a_lost_person_who_looks_the_same_gets_their_id_back() {
        let run = |descriptor: Vec<f32>| {
            let mut people = People::new(TrackConfig::default(), None);
            let info = stream();
            let first_id = anna_seen_and_read(&mut people, &info);
            out_of_view(&mut people, &info, 5..9);
            let mut faces = vec![face(250.0, true)];
            people.frame(&info, 9, 360.0, &mut faces, &[None]);
            assert_ne!(
                faces[0].track_id, first_id,
                "the box is far from the lost one's"
            );
            let wanted = people.reassociation_wanted(0, &faces);
            assert_eq!(wanted, [0]);
            let reading = FaceReading {
                race: None,
                male: 0.0,
                descriptor,
            };
            people.reassociate(0, 360.0, &mut faces, &wanted, &[Some(reading)]);
            // Taken over: no one is lost any more. Like no one: compared again, later.
            let again = people.reassociation_wanted(0, &faces).len();
            (first_id, faces[0].clone(), people.finish().len(), again)
        };
        let (anna, face, records, again) = run(vec![0.95, 0.2]);
        assert_eq!(face.track_id, anna);
        assert_eq!(face.confirmed, Some(true));
        assert_eq!((records, again), (1, 0), "one person");
        let (anna, face, _, again) = run(vec![0.1, 1.0]);
        assert_ne!(face.track_id, anna);
        assert_eq!(face.confirmed, Some(false));
        assert_eq!(again, 0, "not again at once: comparisons are spread out");
    }

    /// A person faceres has read who stays out of view past `max_lost_ms` is away: not in view,
    /// no record yet; back anywhere in the frame and alike enough (0.7 for people away), they
    /// keep their id and make one record; less alike (0.65 would do for a person lost a moment
    /// ago), they are someone new.
    #[test]
    fn a_person_away_who_comes_back_alike_keeps_their_id() {
        let run = |descriptor: Vec<f32>| {
            let mut people = People::new(TrackConfig::default(), None);
            let info = stream();
            let anna = anna_seen_and_read(&mut people, &info);
            // Three seconds out of view: past max_lost_ms (1.5 s), within reentry_ms (10 s).
            let mut ended = Vec::new();
            for frame in 5..80 {
                ended.extend(people.frame(&info, frame, frame as f64 * 40.0, &mut [], &[]));
            }
            assert!(ended.is_empty(), "no record while away");
            assert_eq!(people.in_view(0), 0, "away is not in view");
            // Back at the other side of the frame.
            let mut faces = vec![face(900.0, true)];
            people.frame(&info, 80, 3200.0, &mut faces, &[None]);
            let wanted = people.reassociation_wanted(0, &faces);
            assert_eq!(wanted, [0]);
            let read = FaceReading {
                race: None,
                male: 0.0,
                descriptor,
            };
            people.reassociate(0, 3200.0, &mut faces, &wanted, &[Some(read)]);
            (anna, faces[0].track_id, people.finish())
        };
        let (anna, back, records) = run(vec![0.95, 0.1]);
        assert_eq!(back, anna);
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].first_frame, records[0].last_frame), (0, 80));
        assert_eq!(records[0].frames, 6);
        // Cosine 0.65: enough for someone lost a moment ago, not for someone away.
        let (anna, back, records) = run(vec![0.65, 0.76]);
        assert_ne!(back, anna);
        assert_eq!(
            records.len(),
            1,
            "anna only: the newcomer never became a person"
        );
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
