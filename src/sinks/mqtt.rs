//! The MQTT sink: every frame record with a face (every frame with `all_frames`) and every track
//! record, as JSON, QoS 1, to a topic with `{stream}` filled in (crate rumqttc).
//!
//! A broker that goes away loses nothing: records wait in a bounded queue (`buffer`) until the
//! broker acknowledges them, while the connection is retried with backoff; after a reconnect
//! whatever was not acknowledged is sent again. What does not fit in the queue is counted and
//! logged, never silently lost. At the end the sink waits (a few seconds at most) for the
//! acknowledgements of what was sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    Client, Connection, Event, MqttOptions, Packet, Publish, QoS, Request, TlsConfiguration,
    Transport,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::{FrameRecord, Sink, SinkError, TrackRecord};

/// `[mqtt]` in pipeline files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://[user[:password]@]host[:port]/topic/{stream}`; off when unset. The password is
    /// everything from the first `:` to the last `@` (it may hold `/`, `:`, `@`); a topic cannot
    /// hold an `@`.
    pub url: Option<String>,
    /// Publish frames without faces too.
    pub all_frames: bool,
    /// Records held while the broker does not acknowledge them (a minute of one stream).
    pub buffer: usize,
    /// With `mqtts://`: the PEM file of the certificate authority that signed the broker's
    /// certificate (the system's roots when unset).
    pub ca: Option<std::path::PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: None,
            all_frames: false,
            buffer: DEFAULT_BUFFER,
            ca: None,
        }
    }
}

/// A minute of one 25 fps stream.
pub const DEFAULT_BUFFER: usize = 1500;

/// Environment variable with the broker password (instead of putting it in the URL).
pub const PASSWORD_ENV: &str = "FACEFLOW_MQTT_PASSWORD";

/// Where to publish, parsed from the URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    /// With `{stream}` where the stream id goes.
    pub topic: String,
    /// `mqtts://`: the certificate authorities the broker's certificate must chain to.
    pub tls: Option<Vec<CertificateDer<'static>>>,
}

impl MqttConfig {
    /// The broker to publish to, or `None` when MQTT is off. Errors name the URL with its password
    /// masked.
    pub fn broker(&self) -> Result<Option<Broker>, SinkError> {
        let Some(url) = self.url.as_deref() else {
            return Ok(None);
        };
        let bad = |message: &str| SinkError::Mqtt {
            target: crate::redact::url(url).into_owned(),
            message: message.to_string(),
        };
        crate::limits::Setting::key("buffer")
            .check(self.buffer, 1, 1_000_000, "records")
            .map_err(|e| bad(&e.to_string()))?;
        let (rest, tls) = if let Some(rest) = url.strip_prefix("mqtt://") {
            // A CA file with a plain URL is left unused (said when connecting).
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (rest, true)
        } else {
            return Err(bad(
                "expected mqtt:// or mqtts://[user[:password]@]host[:port]/topic",
            ));
        };
        // The user information ends at the last '@', as `redact` masks it: a password may hold
        // '/', ':' or '@', a host never holds an '@' (nor then can the topic).
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (hostport, topic) = rest.split_once('/').unwrap_or((rest, ""));
        if topic.is_empty() {
            return Err(bad(
                "no topic: add one after the host, e.g. /faceflow/{stream}",
            ));
        }
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, password)) => (Some(user.to_string()), Some(password.to_string())),
                None => (Some(u.to_string()), None),
            },
            None => (None, None),
        };
        let password = password.or_else(|| std::env::var(PASSWORD_ENV).ok());
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad(&format!("bad port '{p}'")))?,
            ),
            None => (hostport, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if topic.contains(['+', '#']) {
            return Err(bad(
                "a topic to publish to cannot hold the wildcards + or #",
            ));
        }
        let tls = if tls {
            Some(trusted_roots(self.ca.as_deref()).map_err(|e| bad(&e))?)
        } else {
            None
        };
        Ok(Some(Broker {
            host: host.to_string(),
            port,
            user,
            password,
            topic: topic.to_string(),
            tls,
        }))
    }
}

/// The certificates of `ca_file` (PEM), or the system's roots without one.
fn trusted_roots(
    ca_file: Option<&std::path::Path>,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let roots = match ca_file {
        Some(path) => {
            let unreadable = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", path.display());
            let pem = std::fs::read(path).map_err(|e| unreadable(&e))?;
            CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unreadable(&e))?
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty()
                && let Some(e) = found.errors.first()
            {
                return Err(format!(
                    "no system CA certificates: {e}; name one with --mqtt-ca"
                ));
            }
            found.certs
        }
    };
    if roots.is_empty() {
        return Err(match ca_file {
            Some(path) => format!("CA file {}: no PEM certificate in it", path.display()),
            None => "no system CA certificates; name one with --mqtt-ca".into(),
        });
    }
    Ok(roots)
}

/// A TLS client set-up trusting `roots`, with the ring provider (rustls' process-wide default
/// is not relied on: nothing installs one).
/// A CA file's certificates must all be usable; of the system's, those that are (a bundle may
/// hold one the verifier cannot read).
fn tls_client(
    roots: &[CertificateDer<'static>],
    from_file: bool,
) -> Result<rustls::ClientConfig, String> {
    let mut store = rustls::RootCertStore::empty();
    if from_file {
        for cert in roots {
            store
                .add(cert.clone())
                .map_err(|e| format!("CA certificate refused: {e}"))?;
        }
    } else {
        store.add_parsable_certificates(roots.iter().cloned());
        if store.is_empty() {
            return Err(
                "none of the system's CA certificates is usable; name one with --mqtt-ca".into(),
            );
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(store)
    .with_no_client_auth())
}

/// What the connection thread and the sink share.
#[derive(Default)]
struct Shared {
    /// Records sent or waiting to be, not yet acknowledged, in order (QoS 1 acknowledgements come
    /// in order): (number, topic, payload).
    unacked: VecDeque<(u64, String, Vec<u8>)>,
    next_number: u64,
    acknowledged: u64,
    dropped: u64,
    /// The connection was lost, and records numbered below this had been handed to rumqttc
    /// then: when the broker kept no session, rumqttc drops those it had not had acknowledged,
    /// so they are sent again (those handed over later wait in its queue and go out by
    /// themselves).
    lost_below: Option<u64>,
    connected: bool,
    stop: bool,
}

/// The MQTT sink of a run.
pub struct MqttSink {
    client: Client,
    broker: Broker,
    all_frames: bool,
    buffer: usize,
    shared: Arc<Mutex<Shared>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The URL as people may see it (password masked).
    shown: String,
    last_drop_warning: Option<Instant>,
}

/// Longest wait at the end for the broker's acknowledgements.
const FINAL_WAIT: Duration = Duration::from_secs(5);

impl MqttSink {
    /// Starts the connection (in the background: a broker that is down at the start is retried
    /// like one that goes away later).
    pub fn connect(config: &MqttConfig, broker: Broker) -> Result<Self, SinkError> {
        let shown = crate::redact::url(config.url.as_deref().unwrap_or_default()).into_owned();
        // A client id of its own per run (process id and start time: two containers may both be
        // process 1) and a persistent session, so after a reconnect rumqttc resends what the
        // broker had not acknowledged.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = format!(
            "faceflow-{}-{:x}",
            std::process::id(),
            started & 0xffff_ffff
        );
        let mut options = MqttOptions::new(id, broker.host.clone(), broker.port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_clean_session(false);
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        if let Some(user) = &broker.user {
            options.set_credentials(user.clone(), broker.password.clone().unwrap_or_default());
        } else if broker.password.is_some() {
            tracing::warn!(
                "mqtt {shown}: {PASSWORD_ENV} is set but the URL names no user: connecting without a login"
            );
        }
        if let (None, Some(ca)) = (&broker.tls, &config.ca) {
            tracing::warn!(
                "mqtt {shown}: the CA file {} is for mqtts:// (TLS); this URL is plain mqtt://, so it is not used",
                ca.display()
            );
        }
        if let Some(roots) = &broker.tls {
            let tls =
                tls_client(roots, config.ca.is_some()).map_err(|message| SinkError::Mqtt {
                    target: shown.clone(),
                    message,
                })?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        }
        let (client, connection) = Client::new(options, config.buffer.max(1));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let thread = {
            let shared = shared.clone();
            let shown_there = shown.clone();
            std::thread::Builder::new()
                .name("mqtt".into())
                .spawn(move || drive(connection, shared, shown_there))
                .map_err(|e| SinkError::Mqtt {
                    target: shown.clone(),
                    message: e.to_string(),
                })?
        };
        Ok(Self {
            client,
            broker,
            all_frames: config.all_frames,
            buffer: config.buffer.max(1),
            shared,
            thread: Some(thread),
            shown,
            last_drop_warning: None,
        })
    }

    /// Queues `record` as JSON to `stream`'s topic (or counts it as dropped when the buffer is
    /// full).
    fn publish(&mut self, stream: &str, record: &impl Serialize) -> Result<(), SinkError> {
        let payload = serde_json::to_vec(record).map_err(|e| SinkError::Mqtt {
            target: self.shown.clone(),
            message: e.to_string(),
        })?;
        let topic = self.broker.topic.replace("{stream}", stream);
        let Ok(mut shared) = self.shared.lock() else {
            return Ok(());
        };
        if shared.unacked.len() >= self.buffer {
            shared.dropped += 1;
            let dropped = shared.dropped;
            drop(shared);
            // Said at most every 5 s: a broker away for long would otherwise flood the log.
            if self
                .last_drop_warning
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
            {
                tracing::warn!(
                    "mqtt {}: {} records waiting for the broker, the buffer is full: {dropped} dropped so far",
                    self.shown,
                    self.buffer
                );
                self.last_drop_warning = Some(Instant::now());
            }
            return Ok(());
        }
        let number = shared.next_number;
        shared.next_number += 1;
        shared
            .unacked
            .push_back((number, topic.clone(), payload.clone()));
        // Never refused for room: whatever waits in rumqttc's request queue is also in `unacked`,
        // which is held to the queue's size.
        let _ = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload);
        Ok(())
    }

    /// Records published and acknowledged, and records dropped (buffer full).
    pub fn counts(&self) -> (u64, u64) {
        self.shared
            .lock()
            .map(|s| (s.acknowledged, s.dropped))
            .unwrap_or((0, 0))
    }
}

/// The connection loop: makes progress, counts acknowledgements, reconnects with backoff and
/// resends after a lost session. Blocks in rumqttc's own poll (a poll cut short by a timeout
/// would cancel a slow connect or a write half done); ends when the sink sets `stop` and the
/// next event, error or connect attempt (at most rumqttc's 5 s connection timeout) comes.
fn drive(mut connection: Connection, shared: Arc<Mutex<Shared>>, shown: String) {
    let mut backoff = Duration::from_millis(250);
    let mut warned = false;
    let stopped = |shared: &Mutex<Shared>| shared.lock().map(|s| s.stop).unwrap_or(true);
    loop {
        if stopped(&shared) {
            return;
        }
        match connection.recv() {
            // The client is gone and its requests are done.
            Err(_) => return,
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                backoff = Duration::from_millis(250);
                let Ok(mut s) = shared.lock() else { return };
                s.connected = true;
                if warned {
                    tracing::warn!("mqtt {shown}: connected again");
                    warned = false;
                }
                if let Some(below) = s.lost_below.take()
                    && !ack.session_present
                {
                    // The broker kept no session and rumqttc dropped what it had not had
                    // acknowledged: send that again, in order, ahead of what was queued since (so
                    // acknowledgements keep the order of `unacked`).
                    let resend: Vec<Request> = s
                        .unacked
                        .iter()
                        .filter(|(n, _, _)| *n < below)
                        .map(|(_, topic, payload)| {
                            Request::Publish(Publish::new(
                                topic.clone(),
                                QoS::AtLeastOnce,
                                payload.clone(),
                            ))
                        })
                        .collect();
                    for request in resend.into_iter().rev() {
                        connection.eventloop.pending.push_front(request);
                    }
                }
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                if let Ok(mut s) = shared.lock() {
                    s.unacked.pop_front();
                    s.acknowledged += 1;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                if let Ok(mut s) = shared.lock()
                    && s.connected
                {
                    // Only when a live connection is lost: failed reconnects leave rumqttc's
                    // queue as it is.
                    s.connected = false;
                    s.lost_below = Some(s.next_number);
                }
                if !warned && !stopped(&shared) {
                    tracing::warn!("mqtt {shown}: {e}; reconnecting, records are kept meanwhile");
                    warned = true;
                }
                // Sleep in short steps, so the end of the run is not held up.
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stopped(&shared) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Sink for MqttSink {
    fn write_frame(
        &mut self,
        _stream: usize,
        record: &FrameRecord,
        _pixels: &[u8],
    ) -> Result<(), SinkError> {
        if record.faces.is_empty() && !self.all_frames {
            return Ok(());
        }
        self.publish(&record.stream, record)
    }

    fn write_track(&mut self, record: &TrackRecord) -> Result<(), SinkError> {
        self.publish(&record.stream, record)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let deadline = Instant::now() + FINAL_WAIT;
        while Instant::now() < deadline {
            let waiting = self.shared.lock().map(|s| s.unacked.len()).unwrap_or(0);
            if waiting == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(mut s) = self.shared.lock() {
            s.stop = true;
        }
        // Never blocks: with the broker away and the request queue full, a blocking disconnect
        // would hold the run's end for good.
        let _ = self.client.try_disconnect();
        // The connection thread ends at its next event or connect attempt; the run does not wait
        // for a broker that does not answer.
        if let Some(t) = self.thread.take() {
            let until = Instant::now() + Duration::from_secs(1);
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let (published, dropped) = self.counts();
        let buffered = self.shared.lock().map(|s| s.unacked.len()).unwrap_or(0) as u64;
        vec![
            ("mqtt_published".into(), published),
            ("mqtt_buffered".into(), buffered),
            ("mqtt_dropped".into(), dropped),
        ]
    }

    fn summary(&self) -> Option<String> {
        let (published, dropped) = self.counts();
        let waiting = self.shared.lock().map(|s| s.unacked.len()).unwrap_or(0);
        let mut line = format!("mqtt {}: {published} records published", self.shown);
        if dropped > 0 {
            line.push_str(&format!(", {dropped} dropped (buffer full)"));
        }
        if waiting > 0 {
            line.push_str(&format!(
                ", {waiting} not acknowledged by the broker at the end"
            ));
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(url: &str) -> Result<Option<Broker>, SinkError> {
        MqttConfig {
            url: Some(url.into()),
            ..MqttConfig::default()
        }
        .broker()
    }

    #[test]
    fn urls_give_host_port_user_password_and_topic() {
        let b = broker("mqtt://u:p@host:1884/faceflow/{stream}")
            .unwrap()
            .unwrap();
        assert_eq!(
            b,
            Broker {
                host: "host".into(),
                port: 1884,
                user: Some("u".into()),
                password: Some("p".into()),
                topic: "faceflow/{stream}".into(),
                tls: None,
            }
        );
        let b = broker("mqtt://127.0.0.1/faces").unwrap().unwrap();
        assert_eq!((b.port, b.user, b.topic.as_str()), (1883, None, "faces"));
        assert!(MqttConfig::default().broker().unwrap().is_none());
    }

    #[test]
    fn bad_urls_are_one_line_errors_without_the_password() {
        for url in [
            "mqtt://host",
            "mqtt://u:secret@host:notaport/t",
            "http://host/t",
            "mqtts://u:secret@host:x/t",
            "mqtt://u:secret@:1883/t",
            "mqtt://host/a/#",
            "mqtt://u:secret/x@host:x/t",
            "mqtt://u:secret\"/x@@:1883/t",
        ] {
            let e = broker(url).unwrap_err().to_string();
            assert!(!e.contains("secret") && !e.contains('\n'), "{e}");
            assert!(e.starts_with("mqtt "), "{e}");
        }
    }

    #[test]
    fn a_password_may_hold_slashes_colons_and_ats() {
        let b = broker("mqtt://u:p/a:b@c#? d@host:1884/faceflow/{stream}")
            .unwrap()
            .unwrap();
        assert_eq!(
            (b.user.as_deref(), b.password.as_deref()),
            (Some("u"), Some("p/a:b@c#? d"))
        );
        assert_eq!((b.host.as_str(), b.port), ("host", 1884));
        assert_eq!(b.topic, "faceflow/{stream}");
    }
}
