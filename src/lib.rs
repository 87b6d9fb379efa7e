//! faceflow: streaming face analytics. Video comes in through GStreamer, frames flow through a graph
//! of stage threads joined by bounded channels, MTCNN finds faces and their landmarks, alignment
//! warps them to a canonical crop, and sinks write JSON Lines.
//!
//! Modules follow the data: [`sources`] → [`graph`] → [`detect`] → [`align`] → [`attributes`] →
//! [`sinks`];
//! [`pipeline`] wires them from a configuration file; [`model`] holds what the attribute model's
//! trainer and runtime share; `train` (feature `train`) is the trainer.

pub mod align;
pub mod attributes;
pub mod console;
pub mod detect;
pub mod eval;
pub mod fleet;
pub mod flow;
pub mod font;
pub mod graph;
pub mod limits;
pub mod model;
pub mod pipeline;
pub mod record;
pub mod redact;
pub mod report;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod track;
#[cfg(feature = "train")]
pub mod train;
