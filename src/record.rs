//! The records of a run: what the stages find (a frame and its faces, a person's track, a still
//! image's faces) and every output writes. They are the pipeline's vocabulary, apart from any
//! output, so detect and track do not depend on a sink; their JSON form is the schema of the
//! metadata stream (docs/guide.md, "The JSON Lines records").

use serde::{Deserialize, Serialize};

use crate::detect::Face;
use crate::model::AgeGrouping;
use crate::model::calibration::Calibration;
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

/// The label of a gender or race whose (calibrated) probability is below the reader's
/// threshold ([`Readout::unknown_below`]).
pub const UNKNOWN: &str = "unknown";
/// How far below the threshold a label already said for a track stays said.
pub const HYSTERESIS: f32 = 0.05;

/// How a model's probabilities become a record's attributes: the tasks it reports, the age
/// grouping, the model's calibration (see [`crate::model::calibration`]), and the probability
/// below which a gender or race reads [`UNKNOWN`].
#[derive(Debug, Clone, PartialEq)]
pub struct Readout {
    pub spec: ModelSpec,
    pub grouping: AgeGrouping,
    pub calibration: Option<Calibration>,
    /// 0: every gender and race is said, however unsure.
    pub unknown_below: f32,
}

impl Readout {
    /// Every label said, probabilities as the model gives them.
    pub fn plain(spec: ModelSpec, grouping: AgeGrouping) -> Self {
        Self {
            spec,
            grouping,
            calibration: None,
            unknown_below: 0.0,
        }
    }

    /// The attributes of `prediction` (`read_twice`: which of its gender and race are means of the
    /// model's and faceres's): calibrated, then a gender or race below the threshold reads
    /// `unknown` (its `prob` stays the most probable label's). Age always names its most probable
    /// group, with every group's (calibrated) probability beside it.
    pub fn attributes(
        &self,
        prediction: &Prediction,
        read_twice: crate::model::calibration::ReadTwice,
    ) -> Attributes {
        self.attributes_after(prediction, read_twice, &Attributes::default())
    }

    /// As [`Readout::attributes`], for a track whose faces were last said as `before`: a gender
    /// or race already said stays said while its probability stays within [`HYSTERESIS`] below
    /// the threshold, so a label near it does not flicker between itself and `unknown`.
    pub fn attributes_after(
        &self,
        prediction: &Prediction,
        read_twice: crate::model::calibration::ReadTwice,
        before: &Attributes,
    ) -> Attributes {
        let calibrated;
        let p = match &self.calibration {
            Some(c) => {
                calibrated = c.apply(prediction, read_twice);
                &calibrated
            }
            None => prediction,
        };
        let mut a = Attributes::of(p, &self.spec, self.grouping);
        if let (Some(c), Some(age)) = (&self.calibration, a.age.as_mut()) {
            let (_, groups) = p.age_group(self.grouping);
            age.probs = c
                .age_groups(&groups)
                .into_iter()
                .map(|v| (v * 1000.0).round() / 1000.0)
                .collect();
        }
        for (label, was) in [
            (a.gender.as_mut(), before.gender.as_ref()),
            (a.race.as_mut(), before.race.as_ref()),
        ] {
            let Some(label) = label else {
                continue;
            };
            let said_before = was.is_some_and(|w| w.label == label.label);
            let least = if said_before {
                self.unknown_below - HYSTERESIS
            } else {
                self.unknown_below
            };
            if label.prob < least {
                label.label = UNKNOWN.to_string();
            }
        }
        a
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

    /// A face with the attributes its model was trained for, read out by `readout`
    /// (`read_twice`: see [`Readout::attributes`]).
    pub fn with_attributes(
        face: Face,
        prediction: &Prediction,
        readout: &Readout,
        read_twice: crate::model::calibration::ReadTwice,
    ) -> Self {
        Self {
            face,
            track_id: None,
            confirmed: None,
            attributes: readout.attributes(prediction, read_twice),
        }
    }
}

/// One video frame's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FrameRecord {
    /// Always "frame" (track records say "track").
    #[serde(rename = "type")]
    pub kind: RecordKind,
    pub stream: String,
    pub source: String,
    pub frame: u64,
    #[serde(serialize_with = "microseconds")]
    pub pts_ms: f64,
    /// Clock time of the frame (RFC 3339, UTC, ms, `Z`): live streams (when it arrived), files
    /// given a `start_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
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
    #[serde(rename = "track_start")]
    TrackStart,
    #[serde(rename = "track_update")]
    TrackUpdate,
}

/// A person now: `track_start` when a track becomes a person (before the record of the frame
/// that made it one), `track_update` now and then while they stay in view
/// (`[track] update_every_s`), with the track's estimate so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrackEvent {
    /// "track_start" or "track_update".
    #[serde(rename = "type")]
    pub kind: RecordKind,
    pub stream: String,
    pub source: String,
    pub track_id: u64,
    /// The frame this is said at, and its time.
    pub frame: u64,
    #[serde(serialize_with = "microseconds")]
    pub pts_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub first_frame: u64,
    #[serde(serialize_with = "microseconds")]
    pub first_pts_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_time: Option<String>,
    /// Frames with this person's face so far.
    pub frames: u64,
    /// The face's box in this frame.
    pub bbox: [f32; 4],
    #[serde(flatten)]
    pub attributes: Attributes,
}

/// One person: a confirmed track, written when it ends (lost long enough, end of stream, Ctrl-C),
/// with the track's final attribute estimate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Clock times of the first and last frame, as frame records' `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A gender or race below the threshold reads `unknown`, its probability kept; the
    /// calibration is applied first, so a sure-sounding reading can fall below it.
    #[test]
    fn unsure_labels_read_unknown_after_calibration() {
        let p = Prediction::from_logits(
            &[0.0; crate::model::FINE_AGE_BINS],
            &[2.0, 0.0],
            &[0.0, 0.0, 1.0, 0.0, 0.0],
        );
        let spec = ModelSpec::current(&Task::ALL);
        let mut readout = Readout::plain(spec, AgeGrouping::Five);
        let plain = readout.attributes(&p, Default::default());
        assert_eq!(plain.gender.as_ref().unwrap().label, "male");
        assert_eq!(plain.gender.as_ref().unwrap().prob, 0.881);
        assert_eq!(plain.race.as_ref().unwrap().label, "asian");
        readout.unknown_below = 0.8;
        let a = readout.attributes(&p, Default::default());
        assert_eq!(a.gender.as_ref().unwrap().label, "male");
        // Race: e / (e + 4) = 0.405.
        assert_eq!(a.race.as_ref().unwrap().label, UNKNOWN);
        assert_eq!(a.race.as_ref().unwrap().prob, 0.405);
        // At temperature 2 the gender's 0.881 becomes 1 / (1 + e^-1) = 0.731: unknown too.
        readout.calibration = Some(Calibration {
            age: 1.0,
            gender: 1.0,
            gender_alone: 2.0,
            race: 1.0,
            race_alone: None,
            fitted_on: "test".into(),
            ece: Vec::new(),
        });
        let a = readout.attributes(&p, Default::default());
        assert_eq!(a.gender.as_ref().unwrap().label, UNKNOWN);
        assert_eq!(a.gender.as_ref().unwrap().prob, 0.731);
        assert_eq!(a.age, plain.age, "age is not thresholded");
        // Said before, a label stays said down to 0.05 below the threshold; not below that.
        readout.calibration = None;
        readout.unknown_below = 0.9;
        assert_eq!(
            readout
                .attributes(&p, Default::default())
                .gender
                .unwrap()
                .label,
            UNKNOWN
        );
        let after = readout.attributes_after(&p, Default::default(), &plain);
        assert_eq!(after.gender.unwrap().label, "male", "0.881 ≥ 0.85");
        readout.unknown_below = 0.95;
        let after = readout.attributes_after(&p, Default::default(), &plain);
        assert_eq!(after.gender.unwrap().label, UNKNOWN);
    }
}
