//! What the fleet keeps in NATS JetStream, and the connection to it: key-value buckets of the
//! cameras (their configuration), the leases (who runs each camera; entries expire unless
//! renewed) and the workers (each live worker's heartbeat). faceflow is threads, not async: a
//! small tokio runtime of its own drives the client, and every call here blocks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// Where the fleet's NATS is when neither `--nats` nor the environment says.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";
/// The environment variable that gives `--nats`.
pub const ENV_URL: &str = "FACEFLOW_NATS";

/// The buckets, and how long a lease or a heartbeat lives without renewal.
const CAMERAS: &str = "faceflow-cameras";
const LEASES: &str = "faceflow-leases";
const WORKERS: &str = "faceflow-workers";
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// The records stream and its subjects' prefix (`faceflow.records.<camera or job>`).
pub const RECORDS: &str = "faceflow-records";
pub const RECORDS_SUBJECT: &str = "faceflow.records";
/// A record (or job) sent again within this long is stored once.
pub(super) const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Where each camera's stored records stop (see [`super::continuity`]).
const CURSORS: &str = "faceflow-cursors";

/// How long a request to NATS may take before it counts as failed.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed request is tried again: a cluster that lost the node leading a bucket
/// answers "no responders" or times out until it has elected another, which takes seconds.
pub(super) const RETRY_FOR: Duration = Duration::from_secs(20);

/// `op` until it succeeds or `retry_for` has passed (the last error then).
pub(super) async fn retrying<T, E, F, Fut>(retry_for: Duration, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() + pause < retry_for => {
                tracing::debug!("nats: {e}; trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Every message stored on `subject` from stream sequence `start` (1: the first) up to the last
/// one there now, given to `each` with its sequence; nothing when none is stored there.
pub(super) async fn read_subject(
    stream: &jetstream::stream::Stream,
    subject: &str,
    start: u64,
    mut each: impl FnMut(&jetstream::Message, u64),
) -> Result<(), String> {
    use jetstream::consumer::{DeliverPolicy, pull};
    let last = match stream.get_last_raw_message_by_subject(subject).await {
        Ok(last) => last.sequence,
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    if last < start {
        return Ok(());
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    // A message removed (its age, the stream's size) before it came would be waited for
    // forever: a read that stops coming fails.
    while let Some(message) = next_within(&mut messages, REQUEST_TIMEOUT).await? {
        let message = message.map_err(|e| e.to_string())?;
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(last);
        each(&message, seq);
        if seq >= last {
            break;
        }
    }
    Ok(())
}

/// The next item of `stream`, or an error when none comes within `wait`.
pub(super) async fn next_within<S: futures_util::Stream + Unpin>(
    stream: &mut S,
    wait: Duration,
) -> Result<Option<S::Item>, String> {
    tokio::time::timeout(wait, stream.next())
        .await
        .map_err(|_| format!("nothing came for {} s", wait.as_secs()))
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("--nats {given}: {reason}")]
    Url { given: String, reason: String },
    #[error("nats {url}: cannot connect: {reason}")]
    Connect { url: String, reason: String },
    #[error("nats {url}: {what}: {reason}")]
    Nats {
        url: String,
        what: String,
        reason: String,
    },
    #[error("camera {camera}: {reason}")]
    Camera { camera: String, reason: String },
}

/// How to reach NATS: `--nats URL[,URL…]` and `--nats-ca FILE`.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    pub urls: String,
    pub ca: Option<PathBuf>,
    /// Servers each bucket and stream is kept on, when they are made [default: as many as
    /// the cluster offers clients, at most 3].
    pub replicas: Option<usize>,
}

/// A camera as the fleet keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraSpec {
    pub camera: String,
    pub uri: String,
    /// `--detect-every` for this camera (`auto` or N), when not the worker's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_every: Option<String>,
}

/// Who runs a camera: the worker holding its lease, since when (RFC 3339).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub worker: String,
    pub since: String,
    /// The camera failed on this worker: why (it is tried again now and then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A live worker's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub worker: String,
    pub max_streams: usize,
    pub cameras: Vec<String>,
    /// The file job it runs, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When it was last renewed (RFC 3339).
    pub seen: String,
}

/// Whether a camera id can name a key and a subject: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn check_camera_id(id: &str) -> Result<(), FleetError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(FleetError::Camera {
            camera: id.to_string(),
            reason: "a camera id is 1 to 64 ASCII letters, digits, '-' or '_'".into(),
        })
    }
}

/// `text` as the start of an id: ASCII letters, digits, `-` and `_` kept, anything else `_`, at
/// most `max` characters; `fallback` when nothing but `_` is left.
pub fn id_part(text: &str, max: usize, fallback: &str) -> String {
    let part: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect();
    if part.trim_matches('_').is_empty() {
        fallback.to_string()
    } else {
        part
    }
}

/// The fleet's NATS, connected, with its buckets.
pub struct Fleet {
    pub(super) runtime: tokio::runtime::Runtime,
    /// How many servers the buckets and streams are replicated over.
    pub(super) replicas: usize,
    /// How long a failed request is tried again, ms.
    retry_for_ms: std::sync::atomic::AtomicU64,
    /// The URLs as shown in errors: passwords masked.
    pub(super) shown: String,
    /// JetStream on the connection (made in the runtime: it starts a task of its own).
    pub(super) js: jetstream::Context,
    cameras: kv::Store,
    leases: kv::Store,
    workers: kv::Store,
    /// The file jobs' states.
    pub(super) jobs: kv::Store,
}

/// `user:pass@` of the first URL that has one (NATS takes one set of credentials).
fn credentials(urls: &[url::Url]) -> Option<(String, String)> {
    urls.iter().find(|u| !u.username().is_empty()).map(|u| {
        (
            percent_decode(u.username()),
            percent_decode(u.password().unwrap_or("")),
        )
    })
}

/// `%XX` escapes of a URL's user or password decoded.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl Fleet {
    /// Connects to the first server of `options` that answers and makes sure the buckets exist
    /// (replicated over as many servers as the cluster has, at most 3).
    pub fn connect(options: &NatsOptions) -> Result<Self, FleetError> {
        let shown = crate::redact::url(&options.urls).into_owned();
        let mut urls = Vec::new();
        for given in options
            .urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            let parsed = url::Url::parse(given).map_err(|e| FleetError::Url {
                given: crate::redact::url(given).into_owned(),
                reason: e.to_string(),
            })?;
            if !["nats", "tls"].contains(&parsed.scheme()) {
                return Err(FleetError::Url {
                    given: crate::redact::url(given).into_owned(),
                    reason: "a NATS URL starts with nats:// or tls://".into(),
                });
            }
            urls.push(parsed);
        }
        if urls.is_empty() {
            return Err(FleetError::Url {
                given: options.urls.clone(),
                reason: "no URL".into(),
            });
        }
        // One thread of its own, so the connection keeps going between calls (heartbeats,
        // acknowledgements) whichever thread calls.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nats")
            .enable_all()
            .build()
            .map_err(|e| FleetError::Connect {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        let addresses: Vec<async_nats::ServerAddr> = urls
            .iter()
            .map(|u| {
                let mut bare = u.clone();
                let _ = bare.set_username("");
                let _ = bare.set_password(None);
                bare.as_str().parse::<async_nats::ServerAddr>()
            })
            .collect::<Result<_, _>>()
            .map_err(|e| FleetError::Url {
                given: shown.clone(),
                reason: e.to_string(),
            })?;
        let mut connect = async_nats::ConnectOptions::new()
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .name("faceflow");
        if let Some((user, password)) = credentials(&urls) {
            connect = connect.user_and_password(user, password);
        }
        if urls.iter().any(|u| u.scheme() == "tls") {
            connect = connect.require_tls(true);
        }
        if let Some(ca) = &options.ca {
            if !ca.is_file() {
                return Err(FleetError::Url {
                    given: format!("--nats-ca {}", ca.display()),
                    reason: "no such file".into(),
                });
            }
            connect = connect.add_root_certificates(ca.clone());
        }
        let nats = |what: &str| {
            let url = shown.clone();
            let what = what.to_string();
            move |e: &dyn std::fmt::Display| FleetError::Nats {
                url: url.clone(),
                what: what.clone(),
                reason: e.to_string(),
            }
        };
        let mut replicas = 1;
        let (js, cameras, leases, workers, jobs) = runtime.block_on(async {
            let client = connect
                .connect(addresses)
                .await
                .map_err(|e| FleetError::Connect {
                    url: shown.clone(),
                    reason: e.to_string(),
                })?;
            // connect_urls lists every server of the cluster that clients may use.
            let servers = options
                .replicas
                .unwrap_or_else(|| client.server_info().connect_urls.len().clamp(1, 3));
            replicas = servers;
            // Records sent again leave their first acknowledgement to async-nats's acker,
            // which holds one of a bounded number of places for it until it comes or times out
            // (30 s, 5,000 places by default): a few rounds of sending 1,024 records again in an
            // election would fill them and stop publishing. An acknowledgement comes in
            // milliseconds or, lost, never.
            let js = jetstream::ContextBuilder::new()
                .ack_timeout(Duration::from_secs(5))
                .max_ack_inflight(50_000)
                .build(client);
            let bucket = |name: &str, max_age: Duration| kv::Config {
                bucket: name.to_string(),
                history: 1,
                max_age,
                num_replicas: servers,
                ..Default::default()
            };
            let mut stores = Vec::new();
            for config in [
                bucket(CAMERAS, Duration::ZERO),
                bucket(LEASES, LEASE_TTL),
                bucket(WORKERS, LEASE_TTL),
                super::jobs::bucket_config(servers),
            ] {
                let name = config.bucket.clone();
                let store = retrying(RETRY_FOR, || async {
                    match js.get_key_value(name.as_str()).await {
                        Ok(store) => Ok(store),
                        Err(_) => js
                            .create_key_value(config.clone())
                            .await
                            .map_err(|e| e.to_string()),
                    }
                })
                .await
                .map_err(|e| nats(&format!("bucket {name}"))(&e))?;
                stores.push(store);
            }
            let jobs = stores.pop();
            let workers = stores.pop();
            let leases = stores.pop();
            let cameras = stores.pop();
            match (cameras, leases, workers, jobs) {
                (Some(c), Some(l), Some(w), Some(j)) => Ok((js, c, l, w, j)),
                _ => Err(nats("buckets")(&"missing")),
            }
        })?;
        Ok(Self {
            runtime,
            replicas,
            retry_for_ms: (RETRY_FOR.as_millis() as u64).into(),
            shown,
            js,
            cameras,
            leases,
            workers,
            jobs,
        })
    }

    pub(super) fn failed(
        &self,
        what: impl Into<String>,
    ) -> impl Fn(&dyn std::fmt::Display) -> FleetError {
        let url = self.shown.clone();
        let what = what.into();
        move |e| FleetError::Nats {
            url: url.clone(),
            what: what.clone(),
            reason: e.to_string(),
        }
    }

    /// Every entry of `store` that holds a value, by key.
    pub(super) fn all<T: for<'de> Deserialize<'de>>(
        &self,
        store: &kv::Store,
        what: &str,
    ) -> Result<BTreeMap<String, T>, FleetError> {
        let failed = self.failed(what);
        let values = self
            .runtime
            .block_on(retrying(self.retry_for(), || async {
                // One consumer over the bucket's latest entries (not a request per key): what
                // a worker asks of NATS every turn stays small with many cameras.
                let consumer = store
                    .stream
                    .create_consumer(jetstream::consumer::pull::OrderedConfig {
                        filter_subject: format!("{}>", store.prefix),
                        deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let mut values = Vec::new();
                if consumer.cached_info().num_pending == 0 {
                    return Ok(values);
                }
                let name = consumer.cached_info().name.clone();
                let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
                // An entry that expires before it is delivered never comes: a read that stops
                // coming fails (and is tried again) rather than waiting forever.
                while let Some(message) = next_within(&mut messages, REQUEST_TIMEOUT).await? {
                    let message = message.map_err(|e| e.to_string())?;
                    let pending = message.info().map(|i| i.pending).unwrap_or(0);
                    // A deleted key is a marker without a value: left out.
                    let deleted = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("KV-Operation"))
                        .is_some();
                    if let Some(key) = message.subject.strip_prefix(store.prefix.as_str())
                        && !deleted
                    {
                        values.push((key.to_string(), message.payload.clone()));
                    }
                    if pending == 0 {
                        break;
                    }
                }
                drop(messages);
                // Not left to linger on the server until it notices nobody reads it.
                let _ = store.stream.delete_consumer(&name).await;
                Ok::<_, String>(values)
            }))
            .map_err(|e| failed(&e))?;
        let mut out = BTreeMap::new();
        for (key, value) in values {
            // One entry written by something else must not stop the fleet: left out, said.
            match serde_json::from_slice(&value) {
                Ok(parsed) => {
                    out.insert(key, parsed);
                }
                Err(e) => tracing::warn!("nats {}: {what}: entry {key} left out: {e}", self.shown),
            }
        }
        Ok(out)
    }

    /// Adds a camera, or updates one of the same id; true when it was new.
    pub fn put_camera(&self, camera: &CameraSpec) -> Result<bool, FleetError> {
        check_camera_id(&camera.camera)?;
        let failed = self.failed(format!("camera {}", camera.camera));
        let value = serde_json::to_vec(camera).map_err(|e| failed(&e))?;
        let key = camera.camera.as_str();
        let existed = self
            .runtime
            .block_on(retrying(self.retry_for(), || self.cameras.get(key)))
            .map_err(|e| failed(&e))?
            .is_some();
        self.runtime
            .block_on(retrying(self.retry_for(), || {
                self.cameras.put(key, value.clone().into())
            }))
            .map_err(|e| failed(&e))?;
        Ok(!existed)
    }

    /// Removes a camera; false when there was none of that id.
    pub fn remove_camera(&self, id: &str) -> Result<bool, FleetError> {
        check_camera_id(id)?;
        let failed = self.failed(format!("camera {id}"));
        let existed = self
            .runtime
            .block_on(retrying(self.retry_for(), || self.cameras.get(id)))
            .map_err(|e| failed(&e))?
            .is_some();
        if existed {
            self.runtime
                .block_on(retrying(self.retry_for(), || self.cameras.delete(id)))
                .map_err(|e| failed(&e))?;
        }
        Ok(existed)
    }

    /// Every camera, by id.
    pub fn cameras(&self) -> Result<BTreeMap<String, CameraSpec>, FleetError> {
        self.all(&self.cameras, "cameras")
    }

    /// Every lease held now, by camera.
    pub fn leases(&self) -> Result<BTreeMap<String, LeaseRecord>, FleetError> {
        self.all(&self.leases, "leases")
    }

    /// Every live worker, by name.
    pub fn workers(&self) -> Result<BTreeMap<String, WorkerRecord>, FleetError> {
        self.all(&self.workers, "workers")
    }

    /// Tries failed requests again for `retry_for` (a worker, which must renew its leases in
    /// time, cannot wait as long as a command can).
    pub fn set_retry_for(&self, retry_for: Duration) {
        self.retry_for_ms.store(
            retry_for.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub(super) fn retry_for(&self) -> Duration {
        Duration::from_millis(self.retry_for_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Takes camera `camera`'s lease if nobody holds it: its revision, or `None` when another
    /// worker holds it.
    pub fn take_lease(&self, camera: &str, lease: &LeaseRecord) -> Result<Option<u64>, FleetError> {
        let failed = self.failed(format!("lease {camera}"));
        let value = serde_json::to_vec(lease).map_err(|e| failed(&e))?;
        match self
            .runtime
            .block_on(self.leases.create(camera, value.into()))
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(failed(&e)),
        }
    }

    /// Renews a lease held at `revision`: its new revision, or `None` when it is no longer this
    /// worker's (it expired and another took it).
    pub fn renew_lease(
        &self,
        camera: &str,
        lease: &LeaseRecord,
        revision: u64,
    ) -> Result<Option<u64>, FleetError> {
        let failed = self.failed(format!("lease {camera}"));
        let value = serde_json::to_vec(lease).map_err(|e| failed(&e))?;
        match self
            .runtime
            .block_on(self.leases.update(camera, value.into(), revision))
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(failed(&e)),
        }
    }

    /// Gives a lease back at once (only if still at `revision`, so never another's).
    pub fn release_lease(&self, camera: &str, revision: u64) -> Result<(), FleetError> {
        let failed = self.failed(format!("lease {camera}"));
        self.runtime
            .block_on(self.leases.delete_expect_revision(camera, Some(revision)))
            .map_err(|e| failed(&e))
    }

    /// Says this worker is alive (expires with the leases' time unless said again).
    pub fn heartbeat(&self, worker: &WorkerRecord) -> Result<(), FleetError> {
        let failed = self.failed(format!("worker {}", worker.worker));
        let value = serde_json::to_vec(worker).map_err(|e| failed(&e))?;
        self.runtime
            .block_on(self.workers.put(worker.worker.as_str(), value.into()))
            .map(drop)
            .map_err(|e| failed(&e))
    }

    /// Says this worker is gone.
    pub fn leave(&self, worker: &str) -> Result<(), FleetError> {
        let failed = self.failed(format!("worker {worker}"));
        self.runtime
            .block_on(self.workers.delete(worker))
            .map_err(|e| failed(&e))
    }

    /// The records stream (`faceflow.records.>`), made if missing, and a context to publish on.
    /// A retention given sets the stream's limits (the oldest records go first), made or not.
    pub fn records(&self, retention: &Retention) -> Result<RecordsStream, FleetError> {
        let failed = self.failed(format!("stream {RECORDS}"));
        let js = self.js.clone();
        let config = jetstream::stream::Config {
            name: RECORDS.to_string(),
            subjects: vec![format!("{RECORDS_SUBJECT}.>")],
            num_replicas: self.replicas,
            // A record published twice (sent again after a lost acknowledgement, or a file job
            // done again) within this window is stored once.
            duplicate_window: retention
                .max_age
                .map_or(DUPLICATE_WINDOW, |age| age.min(DUPLICATE_WINDOW)),
            max_age: retention.max_age.unwrap_or_default(),
            max_bytes: retention.max_bytes.map_or(-1, |b| b as i64),
            ..Default::default()
        };
        let stream = self
            .runtime
            .block_on(retrying(RETRY_FOR, || {
                js.get_or_create_stream(config.clone())
            }))
            .map_err(|e| failed(&e))?;
        if retention.max_age.is_some() || retention.max_bytes.is_some() {
            let mut current = stream.cached_info().config.clone();
            let changed = retention.max_age.is_some_and(|a| a != current.max_age)
                || retention
                    .max_bytes
                    .is_some_and(|b| b as i64 != current.max_bytes);
            if changed {
                current.max_age = retention.max_age.unwrap_or(current.max_age);
                // The server refuses a duplicate window longer than the records' age.
                if !current.max_age.is_zero() {
                    current.duplicate_window = current.duplicate_window.min(current.max_age);
                }
                current.max_bytes = retention.max_bytes.map_or(current.max_bytes, |b| b as i64);
                self.runtime
                    .block_on(js.update_stream(current))
                    .map_err(|e| failed(&e))?;
            }
        }
        let cursors = self
            .runtime
            .block_on(retrying(RETRY_FOR, || async {
                match js.get_key_value(CURSORS).await {
                    Ok(store) => Ok(store),
                    Err(_) => js
                        .create_key_value(kv::Config {
                            bucket: CURSORS.to_string(),
                            history: 1,
                            num_replicas: self.replicas,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| e.to_string()),
                }
            }))
            .map_err(|e| self.failed(format!("bucket {CURSORS}"))(&e))?;
        Ok(RecordsStream {
            handle: self.runtime.handle().clone(),
            js,
            shown: self.shown.clone(),
            cursors,
        })
    }

    /// Where each of `cameras`' stored records stop: its cursor, moved past the records stored
    /// after it (a worker may have died between two cursor writes). Read all at once, each for
    /// at most `within`: a worker must not wait on a NATS in trouble for longer than its leases
    /// allow.
    pub fn cursors(
        &self,
        records: &RecordsStream,
        cameras: &[String],
        within: Duration,
    ) -> Vec<Result<super::continuity::Cursor, FleetError>> {
        let reads = cameras.iter().map(|camera| async move {
            match tokio::time::timeout(within, self.cursor(records, camera)).await {
                Ok(read) => read,
                Err(_) => Err(self.failed(format!("cursor {camera}"))(&format!(
                    "no answer within {} s",
                    within.as_secs_f64()
                ))),
            }
        });
        self.runtime.block_on(futures_util::future::join_all(reads))
    }

    async fn cursor(
        &self,
        records: &RecordsStream,
        camera: &str,
    ) -> Result<super::continuity::Cursor, FleetError> {
        let failed = self.failed(format!("cursor {camera}"));
        let js = &self.js;
        let mut cursor: super::continuity::Cursor =
            match retrying(self.retry_for(), || records.cursors.get(camera))
                .await
                .map_err(|e| failed(&e))?
            {
                Some(value) => serde_json::from_slice(&value).map_err(|e| failed(&e))?,
                None => Default::default(),
            };
        let stream = retrying(self.retry_for(), || js.get_stream(RECORDS))
            .await
            .map_err(|e| failed(&e))?;
        let subject = format!("{RECORDS_SUBJECT}.{camera}");
        read_subject(&stream, &subject, cursor.seq + 1, |message, seq| {
            if let Ok(record) = serde_json::from_slice::<serde_json::Value>(&message.payload) {
                cursor.see(&record, seq);
            }
        })
        .await
        .map_err(|e| failed(&e))?;
        Ok(cursor)
    }

    /// The records stored for `camera` (a camera or a job; all when `None`), oldest first, each given to `each`
    /// (which returns false to stop); with `follow`, new ones as they come, until `each` stops.
    pub fn tail(
        &self,
        camera: Option<&str>,
        follow: bool,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), FleetError> {
        use jetstream::consumer::{DeliverPolicy, pull};
        let failed = self.failed(format!("stream {RECORDS}"));
        let subject = match camera {
            Some(c) => format!("{RECORDS_SUBJECT}.{c}"),
            None => format!("{RECORDS_SUBJECT}.>"),
        };
        let js = &self.js;
        self.runtime.block_on(async {
            let mut stream = retrying(self.retry_for(), || js.get_stream(RECORDS))
                .await
                .map_err(|e| failed(&e))?;
            // Nothing stored: done at once, unless following.
            let empty = match camera {
                Some(_) => stream
                    .get_last_raw_message_by_subject(subject.as_str())
                    .await
                    .is_err(),
                None => stream.info().await.map_err(|e| failed(&e))?.state.messages == 0,
            };
            if empty && !follow {
                return Ok(());
            }
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: subject.clone(),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(&e))?;
            let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
            let mut seen = std::collections::HashSet::new();
            loop {
                // Without --follow, a record that expired before it came ends the tail.
                let message = if follow {
                    messages.next().await
                } else {
                    match tokio::time::timeout(REQUEST_TIMEOUT, messages.next()).await {
                        Ok(message) => message,
                        Err(_) => return Ok(()),
                    }
                };
                let Some(message) = message else { break };
                let message = message.map_err(|e| failed(&e))?;
                // A job's record stored twice (its key outlived the duplicate window) is shown once.
                let key = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(super::jobs::KEY_HEADER))
                    .map(|k| k.as_str().to_string());
                let first = key.is_none_or(|k| seen.insert(k));
                if first && !each(&message.payload) {
                    return Ok(());
                }
                let caught_up = message.info().map(|i| i.pending == 0).unwrap_or(false);
                if caught_up && !follow {
                    return Ok(());
                }
            }
            Ok(())
        })
    }

    /// The URLs, passwords masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// How long the records stream keeps records, and how many bytes of them at most: the
/// stream's own (none unless set) when `None`.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
}

/// Where records are published, from any thread.
#[derive(Clone)]
pub struct RecordsStream {
    pub handle: tokio::runtime::Handle,
    pub js: jetstream::Context,
    pub shown: String,
    /// Where each camera's stored records stop.
    pub cursors: kv::Store,
}

impl crate::sinks::OutputError for FleetError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_ids_are_keys_and_subject_tokens() {
        for ok in ["lobby", "cam-2", "Gate_East", &"a".repeat(64)] {
            assert!(check_camera_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "a b", "东门", "a/b", "*", ">", &"a".repeat(65)] {
            let e = check_camera_id(bad).unwrap_err().to_string();
            assert!(e.contains("1 to 64 ASCII"), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_come_from_the_first_url_that_has_them() {
        let urls: Vec<url::Url> = ["nats://a:4222", "nats://fleet:p%40ss@b:4222"]
            .iter()
            .map(|u| url::Url::parse(u).unwrap())
            .collect();
        assert_eq!(
            credentials(&urls),
            Some(("fleet".to_string(), "p@ss".to_string()))
        );
        assert_eq!(credentials(&urls[..1]), None);
    }

    #[test]
    fn a_bad_url_is_one_line_naming_it_without_its_password() {
        for (given, says) in [
            ("http://cam:4222", "nats:// or tls://"),
            ("nats://u:secret@[::1", "--nats nats://u:***@"),
            ("", "no URL"),
        ] {
            let e = match Fleet::connect(&NatsOptions {
                urls: given.into(),
                ca: None,
                replicas: None,
            }) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{given} connected"),
            };
            assert!(e.contains(says) && !e.contains("secret"), "{given}: {e}");
        }
    }
}
