//! Sinks: where results leave faceflow. Now: the JSON Lines metadata stream.

pub mod json;

pub use json::{
    Attributes, FaceRecord, FrameRecord, ImageRecord, JsonConfig, JsonLinesWriter, RecordKind,
    SinkError, TrackRecord,
};
