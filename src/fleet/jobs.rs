//! File jobs: video files queued in a JetStream work queue, each taken by one worker at a time.
//!
//! A job's message stays in the queue until the worker that runs it acknowledges it, which it
//! does only once every record of the file is stored; while it works it tells JetStream so.
//! A worker that dies leaves its job unacknowledged: JetStream delivers it again, to whichever
//! worker asks next, after [`JOB_ACK_WAIT`]. Each record of a job has a message id made of the
//! job and the record (frame number, track id), so a record published twice is stored once: the
//! worker taking a job over reads back the ids already stored and skips them, and the stream
//! drops a copy sent again within its duplicate window. A job's state (queued, running, done,
//! failed) is kept in a key-value bucket for `fleet jobs`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::store::{
    DUPLICATE_WINDOW, Fleet, FleetError, RECORDS, RECORDS_SUBJECT, RETRY_FOR, read_subject,
    retrying,
};

/// The work queue of jobs, its subject, and the consumer every worker pulls from.
const QUEUE: &str = "faceflow-job-queue";
const QUEUE_SUBJECT: &str = "faceflow.jobs";
const CONSUMER: &str = "faceflow-workers";
/// The jobs' states, by job id.
pub(super) const JOBS: &str = "faceflow-jobs";
/// How long a delivered job waits for its worker's word (progress, done) before JetStream
/// delivers it again; the worker says it is still working every quarter of it.
pub const JOB_ACK_WAIT: Duration = Duration::from_secs(10);
/// How many times a job's worker may die on it (stop without a word) before it counts as failed.
pub const MAX_ATTEMPTS: i64 = 3;
/// The header that carries a job record's key (its message id), so readers can drop a copy.
pub const KEY_HEADER: &str = "Faceflow-Key";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// A job as `fleet jobs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: String,
    pub uri: String,
    pub state: JobState,
    /// The worker running it, or the last one that did.
    pub worker: Option<String>,
    /// Frame records stored so far (all of the file's once done).
    pub frames: u64,
    pub error: Option<String>,
    /// When it was queued (RFC 3339).
    pub submitted: String,
    /// How many times a worker started it.
    #[serde(default)]
    pub attempts: i64,
    /// Of those, how many ended with the job given back (a worker stopped, records to send
    /// again): not counted against it.
    #[serde(default)]
    pub given_back: i64,
}

/// What is queued: the job and its file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobMessage {
    job: String,
    uri: String,
}

/// A job a worker took from the queue: acknowledged, given back or ended through [`Fleet`].
pub struct TakenJob {
    pub job: String,
    pub uri: String,
    /// 1 the first time it is delivered, then 2, …
    pub attempt: i64,
    message: jetstream::Message,
}

/// The queue, as a worker pulls from it.
pub struct JobQueue {
    consumer: jetstream::consumer::PullConsumer,
}

/// A job id for `uri`: its file's name (letters, digits, '-' and '_' kept, at most 40) and a
/// random part.
pub fn job_id(uri: &str) -> String {
    let name = uri
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    let stem = super::store::id_part(stem, 40, "job");
    // nuid's 22 characters mixed by a randomly keyed hash into 8 base-36 ones.
    let mut hasher =
        std::hash::BuildHasher::build_hasher(&std::collections::hash_map::RandomState::new());
    std::hash::Hash::hash(nuid::next().as_str(), &mut hasher);
    let mut n = std::hash::Hasher::finish(&hasher);
    let random: String = (0..8)
        .map(|_| {
            let digit = (n % 36) as u32;
            n /= 36;
            char::from_digit(digit, 36).unwrap_or('0')
        })
        .collect();
    format!("{stem}-{random}")
}

impl Fleet {
    /// The work queue (made if missing), replicated like the buckets.
    async fn queue_stream(&self) -> Result<jetstream::stream::Stream, FleetError> {
        let config = jetstream::stream::Config {
            name: QUEUE.to_string(),
            subjects: vec![QUEUE_SUBJECT.to_string()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            num_replicas: self.replicas,
            // A job submitted again after a lost acknowledgement is queued once.
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let js = &self.js;
        retrying(RETRY_FOR, || js.get_or_create_stream(config.clone()))
            .await
            .map_err(|e| self.failed(format!("stream {QUEUE}"))(&e))
    }

    /// Queues `uri` (checked by the caller) as a job: its id.
    pub fn submit(&self, uri: &str) -> Result<String, FleetError> {
        let job = job_id(uri);
        let failed = self.failed(format!("job {job}"));
        let record = JobRecord {
            job: job.clone(),
            uri: uri.to_string(),
            state: JobState::Queued,
            worker: None,
            frames: 0,
            error: None,
            submitted: super::worker::now_rfc3339(),
            attempts: 0,
            given_back: 0,
        };
        let state = serde_json::to_vec(&record).map_err(|e| failed(&e))?;
        let message = serde_json::to_vec(&JobMessage {
            job: job.clone(),
            uri: uri.to_string(),
        })
        .map_err(|e| failed(&e))?;
        self.runtime.block_on(async {
            self.queue_stream().await?;
            // The state first: a worker that takes the job at once finds it (and its own write,
            // "running", comes after).
            retrying(self.retry_for(), || async {
                match self.jobs.create(job.as_str(), state.clone().into()).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .map_err(|e| failed(&e))?;
            let queued = retrying(self.retry_for(), || async {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", job.as_str());
                self.js
                    .publish_with_headers(QUEUE_SUBJECT, headers, message.clone().into())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| failed(&e));
            if let Err(e) = queued {
                // Not queued: no state left saying it is.
                let _ = self.jobs.delete(job.as_str()).await;
                return Err(e);
            }
            Ok::<_, FleetError>(())
        })?;
        Ok(job)
    }

    /// Every job, by id.
    pub fn jobs(&self) -> Result<BTreeMap<String, JobRecord>, FleetError> {
        self.all(&self.jobs, "jobs")
    }

    /// One job's state, if there is such a job.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, FleetError> {
        let failed = self.failed(format!("job {id}"));
        let value = self
            .runtime
            .block_on(retrying(self.retry_for(), || self.jobs.get(id)))
            .map_err(|e| failed(&e))?;
        value
            .map(|v| serde_json::from_slice(&v).map_err(|e| failed(&e)))
            .transpose()
    }

    /// Writes a job's state.
    pub fn put_job(&self, record: &JobRecord) -> Result<(), FleetError> {
        let failed = self.failed(format!("job {}", record.job));
        let value = serde_json::to_vec(record).map_err(|e| failed(&e))?;
        self.runtime
            .block_on(retrying(self.retry_for(), || {
                self.jobs.put(record.job.as_str(), value.clone().into())
            }))
            .map(drop)
            .map_err(|e| failed(&e))
    }

    /// The queue as workers pull from it: one durable consumer they share, explicit
    /// acknowledgements.
    pub fn job_queue(&self) -> Result<JobQueue, FleetError> {
        let failed = self.failed(format!("stream {QUEUE}"));
        self.runtime.block_on(async {
            let stream = self.queue_stream().await?;
            let config = pull::Config {
                durable_name: Some(CONSUMER.to_string()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: JOB_ACK_WAIT,
                // Delivered until a worker ends it: a job whose workers died on it too often is
                // ended as failed by the worker that gets it next (give-backs do not count).
                max_deliver: -1,
                ..Default::default()
            };
            let consumer = retrying(RETRY_FOR, || {
                stream.get_or_create_consumer(CONSUMER, config.clone())
            })
            .await
            .map_err(|e| failed(&e))?;
            Ok(JobQueue { consumer })
        })
    }

    /// The next job, if one is waiting (asks for at most `wait`).
    pub fn next_job(
        &self,
        queue: &JobQueue,
        wait: Duration,
    ) -> Result<Option<TakenJob>, FleetError> {
        let failed = self.failed(format!("stream {QUEUE}"));
        self.runtime.block_on(async {
            let mut batch = queue
                .consumer
                .batch()
                .max_messages(1)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| failed(&e))?;
            let Some(message) = batch.next().await else {
                return Ok(None);
            };
            let message = message.map_err(|e| failed(&e))?;
            let attempt = message.info().map(|i| i.delivered).unwrap_or(1);
            match serde_json::from_slice::<JobMessage>(&message.payload) {
                Ok(m) => Ok(Some(TakenJob {
                    job: m.job,
                    uri: m.uri,
                    attempt,
                    message,
                })),
                Err(e) => {
                    // Not a job: dropped for good, said.
                    tracing::warn!(
                        "nats {}: {QUEUE}: a message that is not a job dropped: {e}",
                        self.shown
                    );
                    let _ = message.ack_with(AckKind::Term).await;
                    Ok(None)
                }
            }
        })
    }

    /// Tells JetStream about a taken job: still working (`Progress`), done (`Ack`, confirmed by
    /// the server), to be delivered again (`Nak`) or never again (`Term`).
    pub fn answer_job(&self, taken: &TakenJob, kind: AckKind) -> Result<(), FleetError> {
        let failed = self.failed(format!("job {}", taken.job));
        // Done and still-working are confirmed by the server: a worker must know JetStream heard
        // it (else the job may be running elsewhere already).
        let confirm = matches!(kind, AckKind::Ack | AckKind::Progress);
        self.runtime
            .block_on(async {
                if confirm {
                    taken.message.double_ack_with(kind).await
                } else {
                    taken.message.ack_with(kind).await
                }
            })
            .map_err(|e| failed(&e))
    }

    /// The keys of the records stored for `id` (a job): those its runs already published.
    pub fn stored_keys(&self, id: &str) -> Result<HashSet<String>, FleetError> {
        let failed = self.failed(format!("stream {RECORDS}"));
        let subject = format!("{RECORDS_SUBJECT}.{id}");
        let js = &self.js;
        self.runtime.block_on(async {
            let mut keys = HashSet::new();
            let stream = retrying(self.retry_for(), || js.get_stream(RECORDS))
                .await
                .map_err(|e| failed(&e))?;
            read_subject(&stream, &subject, 1, |message, _| {
                if let Some(key) = message.headers.as_ref().and_then(|h| h.get(KEY_HEADER)) {
                    keys.insert(key.as_str().to_string());
                }
            })
            .await
            .map_err(|e| failed(&e))?;
            Ok(keys)
        })
    }
}

impl std::fmt::Debug for TakenJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} (attempt {})", self.job, self.attempt)
    }
}

/// The bucket of jobs' states.
pub(super) fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: JOBS.to_string(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_name_the_file_and_are_subject_tokens() {
        for (uri, stem) in [
            ("/data/cam 1/lobby.mp4", "lobby-"),
            ("file:///a/b/Hamilton%20clip.mkv", "Hamilton_20clip-"),
            ("testsrc://ball?frames=90", "ball-"),
            ("/data/.mp4", "job-"),
            ("http://host/", "job-"),
        ] {
            let id = job_id(uri);
            assert!(id.starts_with(stem), "{uri}: {id}");
            assert!(super::super::store::check_camera_id(&id).is_ok(), "{id}");
        }
        assert_ne!(job_id("/a.mp4"), job_id("/a.mp4"));
    }
}
