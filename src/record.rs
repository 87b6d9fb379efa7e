//! The records of a run: what the stages find (a frame and its faces, a person's track, a still
//! image's faces) and every output writes. They are the pipeline's vocabulary, apart from any
//! output, so detect and track do not depend on a sink; their JSON form is the schema of the
//! metadata stream (README, "Output").

use serde::{Deserialize, Serialize};

use crate::detect::Face;
use crate::model::AgeGrouping;
use crate::model::readout::{AgeJson, LabelJson, Prediction};
use crate::model::spec::{ModelSpec, Task};

/// One face in a record: the detection, its track (video), and the attributes when a model ran.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FaceRecord {
    #[serde(flatten)]
    pub face: Face,
    /// The face's track in its stream (video only): unique in the stream for the whole run.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub track_id: Option<u64>,
    /// Whether the face's track counts as a person yet (video only): it has shown a face clearly
    /// in enough frames (`[track] min_face_frames`). Unconfirmed faces may be a neck or a hand.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub confirmed: Option<bool>,
    #[serde(flatten)]
    pub attributes: Attributes,
}

/// Age, gender and race as written in face and track records: the tasks the model was trained
/// for, the others left out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attributes {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub age: Option<AgeJson>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gender: Option<LabelJson>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub race: Option<LabelJson>,
}

impl Attributes {
    /// The readout of `prediction` for the tasks `spec` was trained for.
    pub fn of(prediction: &Prediction, spec: &ModelSpec, grouping: AgeGrouping) -> Self {
        Self {
            age: spec.has(Task::Age).then(|| prediction.age_json(grouping)),
            gender: spec.has(Task::Gender).then(|| prediction.gender_json()),
            race: spec.has(Task::Race).then(|| prediction.race_json()),
        }
    }
}

impl FaceRecord {
    /// A face without attributes.
    pub fn detection(face: Face) -> Self {
        Self {
            face,
            track_id: None,
            confirmed: None,
            attributes: Attributes::default(),
        }
    }

    /// A face with the attributes its model was trained for.
    pub fn with_attributes(
        face: Face,
        prediction: &Prediction,
        spec: &ModelSpec,
        grouping: AgeGrouping,
    ) -> Self {
        Self {
            face,
            track_id: None,
            confirmed: None,
            attributes: Attributes::of(prediction, spec, grouping),
        }
    }
}

/// One video frame's record.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct FrameRecord {
    /// Always "frame" (track records say "track").
    #[serde(rename = "type")]
    pub kind: RecordKind,
    pub stream: String,
    pub source: String,
    pub frame: u64,
    #[serde(serialize_with = "microseconds")]
    pub pts_ms: f64,
    pub width: u32,
    pub height: u32,
    /// Only on the first frame after a live source reconnected: milliseconds without frames.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "microseconds_opt"
    )]
    pub gap_before_ms: Option<f64>,
    pub faces: Vec<FaceRecord>,
}

/// Which record a line is.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    #[default]
    Frame,
    Track,
}

/// One person: a confirmed track, written when it ends (lost long enough, end of stream, Ctrl-C),
/// with the track's final attribute estimate.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TrackRecord {
    /// Always "track".
    #[serde(rename = "type")]
    pub kind: RecordKind,
    pub stream: String,
    pub source: String,
    pub track_id: u64,
    pub first_frame: u64,
    pub last_frame: u64,
    #[serde(serialize_with = "microseconds")]
    pub first_pts_ms: f64,
    #[serde(serialize_with = "microseconds")]
    pub last_pts_ms: f64,
    /// Frames with this person's face.
    pub frames: u64,
    /// The track's final estimate.
    #[serde(flatten)]
    pub attributes: Attributes,
    /// The person's best face as a JPEG, with `--snapshots`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot: Option<String>,
}

/// Milliseconds to three decimals: clock arithmetic leaves float noise (`7511.697630999999`)
/// that means nothing below a microsecond.
fn round_to_microseconds(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

fn microseconds<S: serde::Serializer>(ms: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round_to_microseconds(*ms))
}

fn microseconds_opt<S: serde::Serializer>(ms: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_some(&round_to_microseconds(*ms)),
        None => s.serialize_none(),
    }
}

/// One still image's record (`faceflow detect`).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub faces: Vec<FaceRecord>,
}

/// Where the snapshot of `track` of `stream` goes in `dir` (`--snapshots`): `<stream>-<track>.jpg`.
pub fn snapshot_path(dir: &std::path::Path, stream: &str, track: u64) -> std::path::PathBuf {
    dir.join(format!("{stream}-{track}.jpg"))
}
