//! The MQTT sink: every frame record with a face (every frame with `all_frames`) and every track
//! record, as JSON, QoS 1, to a topic with `{stream}` filled in (crate rumqttc).
//!
//! A broker that goes away loses nothing: records wait in a bounded queue (`buffer`) until the
//! broker acknowledges them, while the connection is retried with backoff; after a reconnect
//! whatever was not acknowledged is sent again. Each acknowledgement is matched to its record by
//! packet id (`Ledger`), so a record sent twice counts once. What does not fit in the queue is
//! counted and logged, never silently lost. At the end the sink waits (a few seconds at most) for
//! the acknowledgements of what was sent; records still without one fail the run, with their
//! number.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    Client, Connection, Event, MqttOptions, Outgoing, Packet, Publish, QoS, Request,
    TlsConfiguration, Transport,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::{Claim, OutputConfig, OutputContext, OutputError, Sink, SinkError};
use crate::record::{FrameRecord, TrackEvent, TrackRecord};

/// A failure of the MQTT output; `target` is the broker URL, its password masked.
#[derive(Debug, thiserror::Error)]
#[error("mqtt {target}: {message}")]
pub struct MqttError {
    pub target: String,
    pub message: String,
}

impl OutputError for MqttError {}

impl OutputConfig for MqttConfig {
    fn enabled(&self) -> bool {
        self.url.is_some()
    }

    fn validate(&self) -> Result<(), SinkError> {
        self.broker()?;
        Ok(())
    }

    /// The CA file it reads; the broker is elsewhere.
    fn claims(&self, _cx: &OutputContext<'_>) -> Result<Vec<Claim>, SinkError> {
        Ok(self
            .ca
            .iter()
            .map(|ca| Claim::Read {
                what: "the MQTT CA certificate".into(),
                path: ca.clone(),
            })
            .collect())
    }

    fn build(&self, _cx: &OutputContext<'_>) -> Result<Box<dyn Sink>, SinkError> {
        let broker = self.broker()?.ok_or_else(|| MqttError {
            target: String::new(),
            message: "no broker URL".into(),
        })?;
        Ok(Box::new(MqttSink::connect(self, broker)?))
    }
}

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
    pub fn broker(&self) -> Result<Option<Broker>, MqttError> {
        let Some(url) = self.url.as_deref() else {
            return Ok(None);
        };
        let bad = |message: &str| MqttError {
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
                // `mqtt://host/faces@site/…`: an '@' in the topic, not a user name.
                None if u.contains('/') => {
                    return Err(bad("a topic cannot hold an '@'"));
                }
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
                    "no system CA certificates: {e}; name one in [mqtt] ca"
                ));
            }
            found.certs
        }
    };
    if roots.is_empty() {
        return Err(match ca_file {
            Some(path) => format!("CA file {}: no PEM certificate in it", path.display()),
            None => "no system CA certificates; name one in [mqtt] ca".into(),
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
                "none of the system's CA certificates is usable; name one in [mqtt] ca".into(),
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

/// A record waiting for the broker's acknowledgement.
struct Record {
    topic: String,
    payload: Vec<u8>,
}

/// Which record each acknowledgement is for. rumqttc gives a publish its packet id when it sends
/// it (`Outgoing::Publish(pkid)`) and the broker acknowledges by packet id (`PubAck`); requests go
/// out in order, rumqttc's own `pending` list (what a lost connection left unsent or
/// unacknowledged) before its request channel. So a new packet id belongs to the first record
/// still waiting in `pending`, else in the channel; a packet id already known is a record sent
/// again.
///
/// When a live connection breaks, rumqttc moves everything it holds into `pending`: the records
/// sent and not acknowledged (with their packet ids) and everything in its request channel. When
/// the broker then comes back with the session kept, rumqttc sends `pending` again as it is; when
/// it comes back without it, rumqttc empties `pending`, and those records are handed to it again
/// here.
#[derive(Default)]
struct Ledger {
    /// Records not acknowledged yet, by number (the order they came in): the bounded buffer.
    records: BTreeMap<u64, Record>,
    /// Records in rumqttc's `pending` list without a packet id yet, in the order it sends them.
    in_pending: VecDeque<u64>,
    /// Records handed to rumqttc's request channel and not sent yet, in order.
    in_channel: VecDeque<u64>,
    /// Records sent, by the packet id they went out with, waiting for their acknowledgement.
    by_pkid: HashMap<u16, u64>,
    /// A record rumqttc holds back because its packet id was still in use (`AwaitAck`); it goes
    /// out with that id once the id is acknowledged.
    held_back: Option<(u16, u64)>,
    next_number: u64,
    acknowledged: u64,
    /// Publishes that went out a second time or more (after a reconnect).
    sent_again: u64,
}

impl Ledger {
    /// Keeps a record until the broker acknowledges it; its number.
    fn add(&mut self, topic: String, payload: Vec<u8>) -> u64 {
        let number = self.next_number;
        self.next_number += 1;
        self.records.insert(number, Record { topic, payload });
        number
    }

    /// rumqttc sent a publish with packet id `pkid`.
    fn sent(&mut self, pkid: u16) {
        if self.by_pkid.contains_key(&pkid) {
            self.sent_again += 1;
            return;
        }
        let number = match self.held_back {
            Some((held, number)) if held == pkid => {
                self.held_back = None;
                Some(number)
            }
            _ => self
                .in_pending
                .pop_front()
                .or_else(|| self.in_channel.pop_front()),
        };
        match number {
            Some(number) => {
                self.by_pkid.insert(pkid, number);
            }
            None => tracing::debug!(pkid, "mqtt: a publish that is no record's"),
        }
    }

    /// rumqttc holds the next record back until `pkid` is acknowledged. It holds one at a time: a
    /// record it held before is dropped by it, returned to be handed over again.
    fn hold_back(&mut self, pkid: u16) -> Option<u64> {
        let number = self
            .in_pending
            .pop_front()
            .or_else(|| self.in_channel.pop_front())?;
        self.held_back
            .replace((pkid, number))
            .map(|(_, dropped)| dropped)
    }

    /// The broker acknowledged packet id `pkid`: true when that was a record's first
    /// acknowledgement (a repeated or unknown one counts nothing).
    fn acknowledge(&mut self, pkid: u16) -> bool {
        let Some(number) = self.by_pkid.remove(&pkid) else {
            return false;
        };
        self.records.remove(&number);
        self.acknowledged += 1;
        true
    }

    /// The connection failed; `unnumbered` publishes without a packet id are in rumqttc's
    /// `pending` now. A live connection that broke moved its request channel there (so the first
    /// records of the channel are now in `pending`); a failed connection attempt moved nothing.
    /// Returns the record rumqttc was holding back, which it forgets: it must be handed over again.
    fn connection_lost(&mut self, unnumbered: usize) -> Option<u64> {
        let moved = unnumbered.saturating_sub(self.in_pending.len());
        for _ in 0..moved {
            match self.in_channel.pop_front() {
                Some(number) => self.in_pending.push_back(number),
                None => break,
            }
        }
        self.held_back.take().map(|(_, number)| number)
    }

    /// The broker accepted a connection. Without the session kept, rumqttc dropped its `pending`
    /// list: the records in it (sent or not) are returned, oldest first, to be put there again.
    fn connected(&mut self, session_present: bool) -> Vec<u64> {
        if session_present {
            return Vec::new();
        }
        let mut again: Vec<u64> = self
            .by_pkid
            .drain()
            .map(|(_, number)| number)
            .chain(self.in_pending.drain(..))
            .filter(|number| self.records.contains_key(number))
            .collect();
        again.sort_unstable();
        self.sent_again += again.len() as u64;
        self.in_pending = again.iter().copied().collect();
        again
    }

    /// `numbers`' records as publishes for rumqttc's `pending` list.
    fn requests(&self, numbers: &[u64]) -> Vec<Request> {
        numbers
            .iter()
            .filter_map(|n| self.records.get(n))
            .map(|r| {
                Request::Publish(Publish::new(
                    r.topic.clone(),
                    QoS::AtLeastOnce,
                    r.payload.clone(),
                ))
            })
            .collect()
    }
}

/// What the connection thread and the sink share.
#[derive(Default)]
struct Shared {
    ledger: Ledger,
    dropped: u64,
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

/// A sink dropped without `finish` (another output failed to build): its connection thread stops
/// and says nothing more.
impl Drop for MqttSink {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.lock() {
            s.stop = true;
        }
        let _ = self.client.try_disconnect();
    }
}

impl MqttSink {
    /// Starts the connection (in the background: a broker that is down at the start is retried
    /// like one that goes away later).
    pub fn connect(config: &MqttConfig, broker: Broker) -> Result<Self, MqttError> {
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
        let buffer = config.buffer.max(1);
        let mut options = MqttOptions::new(id, broker.host.clone(), broker.port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_clean_session(false);
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        // A packet id for every record the buffer holds: rumqttc numbers publishes in turn, one
        // that reaches an id still unacknowledged is held back, and a second such one replaces
        // the first (handled, see `Ledger::hold_back`, but never needed below 65536 records).
        options.set_inflight(u16::try_from(buffer).unwrap_or(u16::MAX));
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
            let tls = tls_client(roots, config.ca.is_some()).map_err(|message| MqttError {
                target: shown.clone(),
                message,
            })?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        }
        // The request channel holds every record the buffer may: handing one over never fails
        // for room.
        let (client, connection) = Client::new(options, buffer);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let thread = {
            let shared = shared.clone();
            let shown_there = shown.clone();
            std::thread::Builder::new()
                .name("mqtt".into())
                .spawn(move || drive(connection, shared, shown_there))
                .map_err(|e| MqttError {
                    target: shown.clone(),
                    message: e.to_string(),
                })?
        };
        Ok(Self {
            client,
            broker,
            all_frames: config.all_frames,
            buffer,
            shared,
            thread: Some(thread),
            shown,
            last_drop_warning: None,
        })
    }

    /// Queues `record` as JSON to `stream`'s topic (or counts it as dropped when the buffer is
    /// full). People's records (`person`: `track_start`, `track_update`, `track`) have room
    /// beyond the buffer, up to twice it: frames are dropped first, so a subscriber that gets a
    /// person's frames after the broker came back also got the person's start.
    fn publish(
        &mut self,
        stream: &str,
        record: &impl Serialize,
        person: bool,
    ) -> Result<(), SinkError> {
        let payload = serde_json::to_vec(record).map_err(|e| MqttError {
            target: self.shown.clone(),
            message: e.to_string(),
        })?;
        let topic = self.broker.topic.replace("{stream}", stream);
        let Ok(mut shared) = self.shared.lock() else {
            return Ok(());
        };
        let room = if person {
            self.buffer.saturating_mul(2)
        } else {
            self.buffer
        };
        if shared.ledger.records.len() >= room {
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
        let number = shared.ledger.add(topic.clone(), payload.clone());
        // Handed over under the lock, so the channel's order is the ledger's. A record rumqttc
        // did not take (its loop has ended) stays unacknowledged and is counted lost at the end.
        if self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .is_ok()
        {
            shared.ledger.in_channel.push_back(number);
        }
        Ok(())
    }

    /// Records published and acknowledged, and records dropped (buffer full).
    pub fn counts(&self) -> (u64, u64) {
        self.shared
            .lock()
            .map(|s| (s.ledger.acknowledged, s.dropped))
            .unwrap_or((0, 0))
    }

    /// Records not acknowledged (yet), and publishes sent again after reconnects.
    fn waiting(&self) -> (u64, u64) {
        self.shared
            .lock()
            .map(|s| (s.ledger.records.len() as u64, s.ledger.sent_again))
            .unwrap_or((0, 0))
    }
}

/// The connection loop: makes progress, matches acknowledgements to records, reconnects with
/// backoff and hands rumqttc again what a lost session took. Blocks in rumqttc's own poll (a poll
/// cut short by a timeout would cancel a slow connect or a write half done); ends when the sink
/// sets `stop` and the next event, error or connect attempt (at most rumqttc's 5 s connection
/// timeout) comes.
/// A publish numbered, a record held back, an acknowledgement: what the ledger follows of the
/// client's events.
fn track(ledger: &mut Ledger, pending: &mut VecDeque<Request>, event: Event) {
    match event {
        Event::Outgoing(Outgoing::Publish(pkid)) => ledger.sent(pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
            if let Some(dropped) = ledger.hold_back(pkid) {
                ledger.in_pending.push_back(dropped);
                pending.extend(ledger.requests(&[dropped]));
            }
        }
        Event::Incoming(Packet::PubAck(ack)) => {
            ledger.acknowledge(ack.pkid);
        }
        _ => {}
    }
}

fn drive(mut connection: Connection, shared: Arc<Mutex<Shared>>, shown: String) {
    let mut backoff = Duration::from_millis(250);
    let mut warned = false;
    let stopped = |shared: &Mutex<Shared>| shared.lock().map(|s| s.stop).unwrap_or(true);
    loop {
        if stopped(&shared) {
            return;
        }
        let event = connection.recv();
        let Ok(mut s) = shared.lock() else { return };
        match event {
            // The client is gone and its requests are done.
            Err(_) => return,
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                backoff = Duration::from_millis(250);
                if warned {
                    tracing::warn!("mqtt {shown}: connected again");
                    warned = false;
                }
                let again = s.ledger.connected(ack.session_present);
                let pending = &mut connection.eventloop.pending;
                pending.extend(s.ledger.requests(&again));
            }
            Ok(Ok(event)) => track(&mut s.ledger, &mut connection.eventloop.pending, event),
            Ok(Err(e)) => {
                // Events rumqttc queued before the connection broke (a publish numbered just
                // before its write failed): counted now, in order, so the ledger knows which
                // records hold a packet id before it counts those that do not; left queued, they
                // would come after the reconnection and be matched to the wrong records.
                let stale: Vec<Event> = connection.eventloop.state.events.drain(..).collect();
                for event in stale {
                    track(&mut s.ledger, &mut connection.eventloop.pending, event);
                }
                let pending = &mut connection.eventloop.pending;
                let unnumbered = pending
                    .iter()
                    .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
                    .count();
                if let Some(forgotten) = s.ledger.connection_lost(unnumbered) {
                    // rumqttc keeps a held-back publish across connections, where the id it waits
                    // for is never acknowledged: it would block every later record.
                    connection.eventloop.state.collision = None;
                    s.ledger.in_pending.push_back(forgotten);
                    pending.extend(s.ledger.requests(&[forgotten]));
                }
                let stop = s.stop;
                drop(s);
                if !warned && !stop {
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
        self.publish(&record.stream, record, false)
    }

    fn write_track(&mut self, record: &TrackRecord) -> Result<(), SinkError> {
        self.publish(&record.stream, record, true)
    }

    fn write_event(&mut self, record: &TrackEvent) -> Result<(), SinkError> {
        self.publish(&record.stream, record, true)
    }

    /// Waits for the acknowledgements; records the broker never acknowledged fail the run (every
    /// other output is complete by then), with how many were lost.
    fn finish(&mut self) -> Result<(), SinkError> {
        let deadline = Instant::now() + FINAL_WAIT;
        while Instant::now() < deadline && self.waiting().0 > 0 {
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
        let (lost, _) = self.waiting();
        if lost > 0 {
            let (published, _) = self.counts();
            return Err(MqttError {
                target: self.shown.clone(),
                message: format!(
                    "{lost} {} not acknowledged by the broker (lost); {published} published",
                    if lost == 1 { "record" } else { "records" }
                ),
            }
            .into());
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let (published, dropped) = self.counts();
        let (buffered, _) = self.waiting();
        vec![
            ("mqtt_published".into(), published),
            ("mqtt_buffered".into(), buffered),
            ("mqtt_dropped".into(), dropped),
        ]
    }

    fn summary(&self) -> Option<String> {
        let (published, dropped) = self.counts();
        let (waiting, sent_again) = self.waiting();
        let mut line = format!("mqtt {}: {published} records published", self.shown);
        if dropped > 0 {
            line.push_str(&format!(", {dropped} dropped (buffer full)"));
        }
        if sent_again > 0 {
            line.push_str(&format!(", {sent_again} sent again after reconnecting"));
        }
        if waiting > 0 {
            line.push_str(&format!(
                ", {waiting} not acknowledged by the broker (lost)"
            ));
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(url: &str) -> Result<Option<Broker>, MqttError> {
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

    /// A ledger with records 0..n handed to the request channel.
    fn ledger(n: u64) -> Ledger {
        let mut ledger = Ledger::default();
        for i in 0..n {
            let number = ledger.add(format!("t/{i}"), vec![]);
            ledger.in_channel.push_back(number);
        }
        ledger
    }

    fn waiting(ledger: &Ledger) -> Vec<u64> {
        ledger.records.keys().copied().collect()
    }

    #[test]
    fn acknowledgements_are_matched_by_packet_id() {
        let mut l = ledger(3);
        for pkid in [1, 2, 3] {
            l.sent(pkid);
        }
        // Out of order, and one twice: each record once, the right one.
        assert!(l.acknowledge(2));
        assert!(!l.acknowledge(2));
        assert_eq!(waiting(&l), [0, 2]);
        assert!(!l.acknowledge(9));
        assert!(l.acknowledge(3) && l.acknowledge(1));
        assert_eq!((l.acknowledged, waiting(&l).len()), (3, 0));
    }

    #[test]
    fn a_kept_session_resends_with_the_same_ids_counted_once() {
        let mut l = ledger(5);
        for pkid in [1, 2, 3] {
            l.sent(pkid);
        }
        assert!(l.acknowledge(1));
        // The connection breaks: rumqttc moved 2 and 3 (with ids) and the channel's 3 and 4
        // (without) into `pending`; record 5 comes after.
        assert_eq!(l.connection_lost(2), None);
        let five = l.add("t/5".into(), vec![]);
        l.in_channel.push_back(five);
        // Failed attempts to connect move nothing.
        assert_eq!(l.connection_lost(2), None);
        assert!(l.connected(true).is_empty());
        // rumqttc sends `pending` as it was, then the channel.
        for pkid in [2, 3, 4, 5, 6] {
            l.sent(pkid);
        }
        assert_eq!(l.sent_again, 2);
        // The acknowledgement of id 2 lost with the connection comes again: counted once.
        for pkid in [2, 3, 4, 5, 6, 2] {
            l.acknowledge(pkid);
        }
        assert_eq!((l.acknowledged, waiting(&l).len()), (6, 0));
    }

    #[test]
    fn a_lost_session_gets_every_unacknowledged_record_again_twice_over() {
        let mut l = ledger(4);
        for pkid in [1, 2] {
            l.sent(pkid);
        }
        assert!(l.acknowledge(1));
        // First outage: record 1 in flight (id 2); record 2 moved from the channel to `pending`,
        // record 3 handed over just after, still in the channel.
        l.connection_lost(1);
        // The broker kept no session: records 1 and 2 go into `pending` again, in order.
        assert_eq!(l.connected(false), [1, 2]);
        l.sent(3);
        // Second outage halfway: record 1 went out as id 3; `pending` holds record 2 (no id),
        // record 1 (id 3) and record 3, moved from the channel (no id).
        l.connection_lost(2);
        assert_eq!(l.connected(false), [1, 2, 3]);
        for pkid in [4, 5, 6] {
            l.sent(pkid);
        }
        // An acknowledgement of the first connection's id 3 would be no record's now.
        for pkid in [4, 5, 6] {
            assert!(l.acknowledge(pkid), "{pkid}");
        }
        assert_eq!((l.acknowledged, waiting(&l).len()), (4, 0));
        assert_eq!(l.sent_again, 5);
    }

    #[test]
    fn an_at_in_the_topic_is_refused_not_taken_for_a_user() {
        let err = broker("mqtt://host/faces@site/{stream}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot hold an '@'"), "{err}");
        let ok = broker("mqtt://user@host/faces/{stream}").unwrap().unwrap();
        assert_eq!(ok.host, "host");
    }

    /// A publish numbered just before the connection broke (its event still queued in rumqttc):
    /// counted before the loss, so the record it carries is known to hold an id, the next one
    /// in the channel is the one moved to `pending`, and a broker without the session gets
    /// every record again: none is lost, none counted twice.
    #[test]
    fn a_publish_numbered_as_the_connection_broke_is_counted_before_the_loss() {
        let mut l = ledger(4);
        let mut pending = VecDeque::new();
        l.sent(1);
        // Queued before the write failed; `drive` counts such events first.
        track(&mut l, &mut pending, Event::Outgoing(Outgoing::Publish(2)));
        // rumqttc's `pending`: ids 1 and 2 (records 0 and 1), then record 2 from the channel.
        assert_eq!(l.connection_lost(1), None);
        assert_eq!(l.in_channel, [3]);
        assert_eq!(l.connected(false), [0, 1, 2]);
        for pkid in [3, 4, 5, 6] {
            l.sent(pkid);
            assert!(l.acknowledge(pkid), "{pkid}");
        }
        assert_eq!((l.acknowledged, waiting(&l).len()), (4, 0));
    }

    #[test]
    fn what_the_broker_never_acknowledges_stays_waiting() {
        let mut l = ledger(3);
        for pkid in [1, 2, 3] {
            l.sent(pkid);
        }
        assert!(l.acknowledge(1));
        l.connection_lost(0);
        assert_eq!(waiting(&l), [1, 2]);
    }

    #[test]
    fn a_held_back_record_goes_out_with_the_id_it_waited_for() {
        let mut l = ledger(3);
        l.sent(1);
        // Record 1 waits for id 1; record 2 would too: rumqttc keeps only the last.
        assert_eq!(l.hold_back(1), None);
        assert_eq!(l.hold_back(1), Some(1));
        l.in_pending.push_back(1);
        assert!(l.acknowledge(1));
        l.sent(1);
        l.sent(2);
        assert!(l.acknowledge(1) && l.acknowledge(2));
        assert_eq!((l.acknowledged, waiting(&l).len()), (3, 0));
        // A connection lost with a record held back: it is handed over again.
        let mut l = ledger(2);
        l.sent(1);
        l.hold_back(1);
        assert_eq!(l.connection_lost(0), Some(1));
    }
}
