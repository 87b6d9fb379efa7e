//! Integration tests: the real `faceflow` binary on real GStreamer pipelines and real data.

mod util;

mod attributes;
mod cli_errors;
mod clock;
mod detect_images;
mod events;
mod fleet;
mod geometry;
mod hardening;
mod metrics;
mod mqtt;
mod no_video;
mod output_guard;
mod overlay;
mod parity;
mod readme;
mod report;
mod rtsp;
mod run_video;
mod scene;
mod streams;
mod tracking;
mod window;
