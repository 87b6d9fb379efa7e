//! Prometheus metrics of a run, served as text at `http://LISTEN/metrics` (`--metrics`,
//! `[metrics] listen`): per stream frames decoded / reported / dropped, faces, people ended and
//! in view, reconnections; per stage latency histograms; queue depths; the sinks' own counts
//! (MQTT published, buffered, dropped). Values are read from the run's counters at each scrape
//! (prometheus-client encodes them; tiny_http serves them).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use super::PipelineError;
use crate::flow::{RunStats, StageTimes};
use crate::graph::QueueProbe;
use crate::sources::{SourceCounters, StreamInfo};

/// `[metrics]` in pipeline files.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, e.g. `127.0.0.1:9464`; off when unset.
    pub listen: Option<String>,
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), PipelineError> {
        if let Some(listen) = &self.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(PipelineError::Invalid(format!(
                "metrics listen address {listen:?}: expected HOST:PORT with an IP address, e.g. 127.0.0.1:9464"
            )));
        }
        Ok(())
    }
}

/// What a scrape reads.
pub(crate) struct Sources {
    pub(crate) streams: Vec<Arc<StreamInfo>>,
    pub(crate) counters: Vec<Arc<SourceCounters>>,
    pub(crate) sink: RunStats,
    pub(crate) probes: Arc<Vec<QueueProbe>>,
    pub(crate) times: StageTimes,
}

type StreamLabel = Vec<(String, String)>;

impl Sources {
    /// The metrics now, in Prometheus's text format.
    pub(crate) fn text(&self) -> String {
        let mut registry = Registry::with_prefix("faceflow");
        let family = |registry: &mut Registry, name: &str, help: &str| {
            let f = Family::<StreamLabel, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let decoded = family(&mut registry, "frames_decoded", "Frames decoded");
        let reported = family(
            &mut registry,
            "frames_reported",
            "Frames written by the sinks",
        );
        let dropped = family(
            &mut registry,
            "frames_dropped",
            "Frames dropped behind a live source",
        );
        let faces = family(&mut registry, "faces", "Faces in the frames written");
        let people = family(
            &mut registry,
            "people_ended",
            "People (confirmed tracks) that ended",
        );
        let reconnects = family(&mut registry, "reconnections", "Camera reconnections");
        let evenly = family(
            &mut registry,
            "frames_dropped_evenly",
            "Frames of a live stream under load dropped evenly from its backlog (counted in \
             frames_dropped too)",
        );
        let interval = Family::<StreamLabel, Gauge>::default();
        registry.register(
            "full_search_interval_ms",
            "Video time between full searches now, live streams in auto mode (widened under load)",
            interval.clone(),
        );

        let by_label = family(
            &mut registry,
            "people",
            "People (confirmed tracks) that ended, by the gender and age group their track record \
             gives (none: not reported)",
        );
        for ((stream, gender, age_group), n) in &self.sink.now().people_by_label {
            let labels = vec![
                ("stream".to_string(), stream.clone()),
                ("gender".to_string(), gender.clone()),
                ("age_group".to_string(), age_group.clone()),
            ];
            by_label.get_or_create(&labels).inc_by(*n);
        }

        let active = Family::<StreamLabel, Gauge>::default();
        registry.register(
            "people_in_view",
            "Confirmed tracks alive now",
            active.clone(),
        );
        let sink = self.sink.now();
        for (i, info) in self.streams.iter().enumerate() {
            let label = vec![("stream".to_string(), info.id.clone())];
            if let Some(c) = self.counters.get(i) {
                decoded
                    .get_or_create(&label)
                    .inc_by(c.decoded.load(Ordering::Relaxed));
                dropped.get_or_create(&label).inc_by(c.dropped());
                reconnects
                    .get_or_create(&label)
                    .inc_by(c.reconnects.load(Ordering::Relaxed));
                evenly
                    .get_or_create(&label)
                    .inc_by(c.dropped_evenly.load(Ordering::Relaxed));
                let ms = c.full_search_interval_ms.load(Ordering::Relaxed);
                if info.live && ms > 0 {
                    interval.get_or_create(&label).set(ms as i64);
                }
            }
            let at = |v: &Vec<u64>| v.get(i).copied().unwrap_or(0);
            reported.get_or_create(&label).inc_by(at(&sink.reported));
            faces.get_or_create(&label).inc_by(at(&sink.faces));
            people.get_or_create(&label).inc_by(at(&sink.people));
            active
                .get_or_create(&label)
                .set(at(&sink.people_in_view) as i64);
        }
        let depth = Family::<Vec<(String, String)>, Gauge>::default();
        let capacity = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "queue_depth",
            "Items waiting in a stage queue",
            depth.clone(),
        );
        registry.register(
            "queue_capacity",
            "Capacity of a stage queue",
            capacity.clone(),
        );
        for p in self.probes.iter() {
            let label = vec![("queue".to_string(), p.name.to_string())];
            depth.get_or_create(&label).set(p.depth() as i64);
            capacity.get_or_create(&label).set(p.capacity as i64);
        }
        let reorder = vec![("queue".to_string(), "reorder".to_string())];
        depth
            .get_or_create(&reorder)
            .set(sink.reorder_pending as i64);
        capacity
            .get_or_create(&reorder)
            .set(sink.reorder_window as i64);
        registry.register(
            "detect_seconds",
            "Seconds per frame in a detect worker",
            self.times.detect.clone(),
        );
        registry.register(
            "attributes_seconds",
            "Seconds per attribute-model call (a batch of faces)",
            self.times.attributes.clone(),
        );
        registry.register(
            "second_reader_seconds",
            "Seconds per call of the second reader of gender and race (a frame's faces)",
            self.times.second_reader.clone(),
        );
        registry.register(
            "sinks_seconds",
            "Seconds per item written to every sink",
            self.times.sinks.clone(),
        );
        for (name, value) in &sink.sink_counters {
            let g = Gauge::<i64>::default();
            g.set(*value as i64);
            registry.register(name.clone(), name.replace('_', " "), g);
        }
        let mut text = String::new();
        let _ = encode(&mut text, &registry);
        text
    }
}

/// Binds the metrics address; a taken port is one line.
pub(crate) fn bind(listen: &str) -> Result<std::net::TcpListener, PipelineError> {
    std::net::TcpListener::bind(listen)
        .map_err(|e| PipelineError::Invalid(format!("metrics: cannot listen on {listen}: {e}")))
}

/// The `/metrics` endpoint, served from its own thread until dropped.
pub(crate) struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves on a bound `listener`.
    pub(crate) fn start(
        listener: std::net::TcpListener,
        sources: Sources,
    ) -> Result<Self, PipelineError> {
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| PipelineError::Invalid(format!("metrics: {e}")))?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let response = if request.url() == "/metrics" {
                        let header = tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
                        )
                        .ok();
                        let mut r = tiny_http::Response::from_string(sources.text());
                        if let Some(h) = header {
                            r.add_header(h);
                        }
                        r
                    } else {
                        tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                    };
                    let _ = request.respond(response);
                }
            })
            .map_err(|e| PipelineError::Invalid(format!("metrics: {e}")))?;
        Ok(Self {
            server,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// People who ended are counted by stream, gender and age group, as their records say.
    #[test]
    fn people_are_counted_by_gender_and_age_group() {
        let sink = RunStats::new(1, 8);
        sink.update(|n| {
            let mut add = |g: &str, a: &str, k: u64| {
                n.people_by_label
                    .insert(("lobby".into(), g.into(), a.into()), k);
            };
            add("female", "24-39", 2);
            add("unknown", "40-55", 1);
            add("none", "none", 3);
        });
        let text = Sources {
            streams: Vec::new(),
            counters: Vec::new(),
            sink,
            probes: Arc::new(Vec::new()),
            times: StageTimes::default(),
        }
        .text();
        for line in [
            "faceflow_people_total{stream=\"lobby\",gender=\"female\",age_group=\"24-39\"} 2",
            "faceflow_people_total{stream=\"lobby\",gender=\"unknown\",age_group=\"40-55\"} 1",
            "faceflow_people_total{stream=\"lobby\",gender=\"none\",age_group=\"none\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
