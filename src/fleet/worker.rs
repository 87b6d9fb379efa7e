//! A fleet worker: claims cameras by lease, runs them in one multi-stream pipeline (everything
//! `run` does), publishes every record to JetStream, renews its leases and its heartbeat, hands
//! cameras over to balance the fleet, and stops a camera before its lease can expire when it
//! cannot renew it.
//!
//! When the cameras it runs change, the worker restarts its pipeline with the new set: the
//! cameras it keeps miss a moment of frames. Whichever worker runs a camera, its frame numbers,
//! track ids and `pts_ms` go on from its stored records, the first frame of a run saying how
//! long there were none (`gap_before_ms`; see [`super::continuity`]). A lease is given back
//! only after its camera stopped, and taken before it starts, so no camera runs on two workers
//! at once.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;

use super::balance::{FleetView, plan};
use super::jobs::{JOB_ACK_WAIT, JobQueue, JobRecord, JobState, MAX_ATTEMPTS, TakenJob};
use super::lease::{HeldLease, LeasePolicy};
use super::publish::{JobKeys, RecordsSink, Tally};
use super::store::{CameraSpec, Fleet, FleetError, LEASE_TTL, LeaseRecord, WorkerRecord};
use crate::graph::Control;
use crate::pipeline::{self, PipelineConfig, PipelineError, RunHooks, RunSummary};

/// How a worker runs.
pub struct WorkerOptions {
    pub name: String,
    pub max_streams: usize,
    /// The pipeline every camera runs in (detector, attributes, tracking, outputs); its sources
    /// are the cameras held.
    pub template: PipelineConfig,
    /// How often the worker looks at the fleet.
    pub tick: Duration,
    /// The records stream's limits, when this worker sets them.
    pub retention: super::store::Retention,
}

/// The pipeline running now, and the cameras it runs.
struct Running {
    cameras: BTreeMap<String, CameraSpec>,
    control: Control,
    thread: JoinHandle<Result<RunSummary, PipelineError>>,
    /// Cameras whose stream ended in this run, and why.
    ended: Arc<Mutex<BTreeMap<String, String>>>,
}

/// How long a worker waits for where its cameras' records stopped (well inside the time its
/// leases allow), and how soon it tries a camera whose records could not be read again.
const CURSOR_READ_WITHIN: Duration = Duration::from_secs(3);
const CURSOR_RETRY: Duration = Duration::from_secs(2);

/// How long a failed camera waits before its worker tries it again.
const CAMERA_RETRY: Duration = Duration::from_secs(30);

/// A file job running, in a pipeline of its own.
struct RunningJob {
    taken: TakenJob,
    record: JobRecord,
    control: Control,
    thread: JoinHandle<Result<RunSummary, PipelineError>>,
    tally: Arc<Tally>,
    /// When JetStream last heard that this worker is on it.
    answered_at: Duration,
}

/// What a worker did, for its last lines.
#[derive(Debug, Default)]
pub struct WorkerSummary {
    pub pipelines: usize,
    pub claimed: usize,
    pub released: usize,
    pub lost: usize,
    pub jobs_done: usize,
    pub jobs_failed: usize,
    pub jobs_given_back: usize,
}

/// How often an idle worker with room asks the queue for a job, and how long it waits.
const JOB_POLL_EVERY: Duration = Duration::from_secs(1);
const JOB_POLL_WAIT: Duration = Duration::from_millis(200);

/// How often a worker reads the whole fleet (cameras, leases, workers): every turn up to 100
/// cameras, then 5 ms more per camera, at most 3 s (1,000 cameras: 3 s), so the reads of 50
/// workers stay a small load on NATS; renewals keep their own pace.
fn view_interval(cameras: usize, tick: Duration) -> Duration {
    (Duration::from_millis(5) * cameras as u32).clamp(tick, Duration::from_secs(3))
}

/// How long a worker whose pipeline could not start claims nothing.
const FAILED_START_BACKOFF: Duration = Duration::from_secs(10);

/// What the watchdog watches: the running pipeline, and when each of its cameras' leases was
/// last confirmed. It stops the pipeline when a lease may expire within the stop margin,
/// whatever the worker's loop is doing (a request to NATS that hangs must not let a camera run
/// on past its lease).
#[derive(Default)]
struct Watched {
    pipeline: Option<Control>,
    confirmed_at: BTreeMap<String, Duration>,
    done: bool,
}

fn watchdog(
    watched: Arc<Mutex<Watched>>,
    policy: LeasePolicy,
    started: Instant,
    me: String,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        loop {
            {
                let Ok(w) = watched.lock() else { return };
                if w.done {
                    return;
                }
                let now = started.elapsed();
                if let Some(control) = &w.pipeline
                    && !control.stop_requested()
                    && let Some((camera, _)) = w
                        .confirmed_at
                        .iter()
                        .find(|(_, at)| policy.must_stop(**at, now))
                {
                    tracing::warn!(
                        "worker {me}: the lease of camera {camera} was not renewed in time: stopping its pipeline"
                    );
                    control.request_stop();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Now, in ms since the Unix epoch.
fn unix_now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

pub(super) fn now_rfc3339() -> String {
    crate::sources::rfc3339_ms(unix_now_ms()).unwrap_or_default()
}

/// Renews `camera`'s lease (its write sent at `now`): true when renewed, false when it is
/// another worker's now.
fn renew(
    fleet: &Fleet,
    me: &str,
    camera: &str,
    lease: &mut HeldLease,
    now: Duration,
) -> Result<bool, FleetError> {
    let record = LeaseRecord {
        worker: me.to_string(),
        since: lease.since.clone(),
        error: lease.error.clone(),
    };
    Ok(match fleet.renew_lease(camera, &record, lease.revision)? {
        Some(revision) => {
            lease.revision = revision;
            lease.confirmed_at = now;
            true
        }
        None => false,
    })
}

/// Lets `cameras` go (their leases lost or another worker's): no longer held, and the pipeline
/// running any of them is stopped at once, for another worker may run them already.
fn let_go(
    me: &str,
    why: &str,
    cameras: &[String],
    held: &mut BTreeMap<String, HeldLease>,
    summary: &mut WorkerSummary,
    watched: &Mutex<Watched>,
) {
    for camera in cameras {
        tracing::warn!("worker {me}: camera {camera} {why}: stopping it");
        if held.remove(camera).is_some() {
            summary.lost += 1;
        }
    }
    if let Ok(w) = watched.lock()
        && cameras.iter().any(|c| w.confirmed_at.contains_key(c))
        && let Some(control) = &w.pipeline
    {
        control.request_stop();
    }
}

/// Gives `leases` back (their cameras stopped).
fn release(fleet: &Fleet, leases: Vec<(String, u64)>, summary: &mut WorkerSummary) {
    for (camera, revision) in leases {
        if let Err(e) = fleet.release_lease(&camera, revision) {
            tracing::warn!("{e}");
        }
        summary.released += 1;
    }
}

/// The worker's loop, until `control` is asked to stop (SIGTERM, Ctrl-C): then its cameras stop,
/// its leases are given back at once and it leaves the fleet.
pub fn run(
    fleet: &Fleet,
    options: &WorkerOptions,
    control: &Control,
) -> Result<WorkerSummary, FleetError> {
    let records = fleet.records(&options.retention)?;
    let queue = fleet.job_queue()?;
    let mut job: Option<RunningJob> = None;
    let mut last_poll: Option<Duration> = None;
    // From here the worker must renew its leases in time: it cannot wait on a failing request
    // as long as a command can (its next turn tries again).
    fleet.set_retry_for(Duration::from_secs(1));
    let policy = LeasePolicy::new(LEASE_TTL);
    let started = Instant::now();
    let mut held: BTreeMap<String, HeldLease> = BTreeMap::new();
    let mut running: Option<Running> = None;
    let mut to_release: Vec<(String, u64)> = Vec::new();
    let mut last_heartbeat: Option<Duration> = None;
    let mut summary = WorkerSummary::default();
    let mut backoff_until: Option<Duration> = None;
    // Cameras that failed (or wait to know where their records stopped), and when to try them
    // again.
    let mut retry_at: BTreeMap<String, Duration> = BTreeMap::new();
    let mut last_view: Option<(Duration, BTreeMap<String, CameraSpec>)> = None;
    let me = options.name.as_str();
    let watched = Arc::new(Mutex::new(Watched::default()));
    let dog = watchdog(watched.clone(), policy, started, me.to_string());
    let watch = |f: &mut dyn FnMut(&mut Watched)| {
        if let Ok(mut w) = watched.lock() {
            f(&mut w);
        }
    };
    while !control.stop_requested() {
        let now = started.elapsed();
        // Renew what is due; a lease that cannot be renewed in time stops its camera.
        let mut taken_over = Vec::new();
        for (camera, lease) in held.iter_mut() {
            if policy.renewal_due(lease.confirmed_at, now) {
                match renew(fleet, me, camera, lease, now) {
                    Ok(true) => {}
                    Ok(false) => taken_over.push(camera.clone()),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
        watch(&mut |w| {
            for (camera, at) in w.confirmed_at.iter_mut() {
                if let Some(lease) = held.get(camera) {
                    *at = lease.confirmed_at;
                }
            }
        });
        let late: Vec<String> = held
            .iter()
            .filter(|(_, l)| policy.must_stop(l.confirmed_at, started.elapsed()))
            .map(|(c, _)| c.clone())
            .collect();
        let_go(
            me,
            "is another worker's now",
            &taken_over,
            &mut held,
            &mut summary,
            &watched,
        );
        let_go(
            me,
            "was not renewed in time",
            &late,
            &mut held,
            &mut summary,
            &watched,
        );
        if last_heartbeat.is_none_or(|t| policy.renewal_due(t, now)) {
            let beat = WorkerRecord {
                worker: me.to_string(),
                max_streams: options.max_streams,
                cameras: held.keys().cloned().collect(),
                job: job.as_ref().map(|j| j.record.job.clone()),
                seen: now_rfc3339(),
            };
            match fleet.heartbeat(&beat) {
                Ok(()) => last_heartbeat = Some(now),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        // What the fleet says now, and what to do about it: read every turn in a small fleet,
        // less often in a large one (each read delivers every camera, lease and worker).
        let view_due = last_view
            .as_ref()
            .is_none_or(|(at, cameras)| now >= *at + view_interval(cameras.len(), options.tick));
        let view = if view_due {
            Some(
                fleet
                    .cameras()
                    .and_then(|c| Ok((c, fleet.leases()?, fleet.workers()?))),
            )
        } else {
            None
        };
        let cameras = match view {
            None => last_view
                .as_ref()
                .map(|(_, cameras)| cameras.clone())
                .unwrap_or_default(),
            Some(Ok((cameras, leases, workers))) => {
                last_view = Some((now, cameras.clone()));
                let mut view = FleetView {
                    cameras: cameras.keys().cloned().collect(),
                    holders: leases.into_iter().map(|(c, l)| (c, l.worker)).collect(),
                    workers: workers
                        .into_values()
                        .map(|w| (w.worker, w.max_streams))
                        .collect(),
                };
                // A lease the bucket gives another worker is lost, whatever this worker thought.
                let taken: Vec<String> = held
                    .keys()
                    .filter(|c| view.holders.get(*c).is_some_and(|w| w != me))
                    .cloned()
                    .collect();
                let_go(
                    me,
                    "is another worker's now",
                    &taken,
                    &mut held,
                    &mut summary,
                    &watched,
                );
                // This worker's own leases as it knows them (the bucket may lag).
                view.holders.retain(|c, w| w != me || held.contains_key(c));
                for camera in held.keys() {
                    view.holders.insert(camera.clone(), me.to_string());
                }
                // A camera removed from the fleet stops and its lease goes back.
                for camera in held.keys().cloned().collect::<Vec<_>>() {
                    if !cameras.contains_key(&camera)
                        && let Some(lease) = held.remove(&camera)
                    {
                        to_release.push((camera, lease.revision));
                    }
                }
                let mut step = plan(me, &view);
                if backoff_until.is_some_and(|t| started.elapsed() < t) {
                    step.claim.clear();
                }
                for camera in step.claim {
                    let sent = started.elapsed();
                    let since = now_rfc3339();
                    let record = LeaseRecord {
                        worker: me.to_string(),
                        since: since.clone(),
                        error: None,
                    };
                    match fleet.take_lease(&camera, &record) {
                        Ok(Some(revision)) => {
                            tracing::info!("worker {me}: took camera {camera}");
                            held.insert(
                                camera,
                                HeldLease {
                                    revision,
                                    confirmed_at: sent,
                                    since,
                                    error: None,
                                },
                            );
                            summary.claimed += 1;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
                if let Some(camera) = step.release
                    && let Some(lease) = held.remove(&camera)
                {
                    tracing::info!("worker {me}: handing camera {camera} over");
                    to_release.push((camera, lease.revision));
                }
                cameras
            }
            Some(Err(e)) => {
                tracing::warn!("{e}");
                running
                    .as_ref()
                    .map(|r| r.cameras.clone())
                    .unwrap_or_default()
            }
        };
        // Cameras whose stream failed: marked (the status shows why), tried again later.
        let now = started.elapsed();
        if let Some(r) = &running
            && let Ok(ended) = r.ended.lock()
        {
            for (camera, why) in ended.iter() {
                if let Some(lease) = held.get_mut(camera)
                    && lease.error.is_none()
                    && r.cameras.contains_key(camera)
                    && !retry_at.contains_key(camera)
                {
                    tracing::warn!("worker {me}: camera {camera} failed: {why}");
                    lease.error = Some(why.clone());
                    retry_at.insert(camera.clone(), now + CAMERA_RETRY);
                }
            }
        }
        retry_at.retain(|camera, _| held.contains_key(camera));
        let mut retry = false;
        let mut retried = Vec::new();
        for (camera, at) in retry_at.clone() {
            if now >= at
                && let Some(lease) = held.get_mut(&camera)
            {
                tracing::info!("worker {me}: trying camera {camera} again");
                lease.error = None;
                retry_at.remove(&camera);
                retried.push(camera);
                retry = true;
            }
        }
        // A camera this worker cannot open fails here, alone.
        for (camera, lease) in held.iter_mut() {
            if lease.error.is_none()
                && let Some(spec) = cameras.get(camera)
                && let Err(e) = crate::sources::parse_input(&spec.uri, None)
            {
                tracing::warn!("worker {me}: camera {camera} failed: {e}");
                lease.error = Some(e.to_string());
                retry_at.insert(camera.clone(), now + CAMERA_RETRY);
            }
        }
        // The cameras to run: those held and not failed, as configured now.
        let wanted = |held: &BTreeMap<String, HeldLease>| -> BTreeMap<String, CameraSpec> {
            held.iter()
                .filter(|(_, l)| l.error.is_none())
                .filter_map(|(c, _)| cameras.get(c).map(|s| (c.clone(), s.clone())))
                .collect()
        };
        let want = wanted(&held);
        // A camera tried again restarts the pipeline only if it can run (not failed at once).
        let retry = retry && retried.iter().any(|c| want.contains_key(c));
        // A camera that failed in the running pipeline needs no restart (its stream ended).
        let same = running.as_ref().is_some_and(|r| {
            r.cameras
                .iter()
                .filter(|(c, _)| !retry_at.contains_key(*c))
                .eq(want.iter())
        });
        let finished = running.as_ref().is_some_and(|r| r.thread.is_finished());
        if finished || retry || !same {
            if let Some(r) = running.take() {
                watch(&mut |w| w.pipeline = None);
                let ended = r.ended.clone();
                let ran: Vec<String> = r.cameras.keys().cloned().collect();
                stop(me, r);
                // A stream that ended as its pipeline stopped failed too (unless the stop
                // ended it).
                if !retry && let Ok(ended) = ended.lock() {
                    for camera in ran {
                        if let (Some(why), Some(lease)) =
                            (ended.get(&camera), held.get_mut(&camera))
                            && lease.error.is_none()
                            && !retry_at.contains_key(&camera)
                            && finished
                        {
                            tracing::warn!("worker {me}: camera {camera} failed: {why}");
                            lease.error = Some(why.clone());
                            retry_at.insert(camera, started.elapsed() + CAMERA_RETRY);
                        }
                    }
                }
                // Stopping may have taken a while: the leases kept are renewed before their
                // cameras start again, and those that cannot be are let go.
                let now = started.elapsed();
                held.retain(|camera, lease| match renew(fleet, me, camera, lease, now) {
                    Ok(renewed) => renewed,
                    Err(_) => !policy.must_stop(lease.confirmed_at, started.elapsed()),
                });
            }
            // Stopped: their leases can go.
            release(fleet, std::mem::take(&mut to_release), &mut summary);
            let mut wanted = wanted(&held);
            // Each camera's numbers go on from its stored records: one whose records cannot
            // be read now waits (a moment, as a failed camera does), rather than start again
            // at frame 0.
            let ids: Vec<String> = wanted.keys().cloned().collect();
            let mut after = BTreeMap::new();
            let reads = fleet.cursors(&records, &ids, CURSOR_READ_WITHIN);
            for (camera, read) in ids.into_iter().zip(reads) {
                match read {
                    Ok(cursor) => {
                        after.insert(camera, cursor);
                    }
                    Err(e) => {
                        let why = format!("where its records stopped cannot be read: {e}");
                        tracing::warn!("worker {me}: camera {camera}: {why}");
                        wanted.remove(&camera);
                        if let Some(lease) = held.get_mut(&camera) {
                            lease.error = Some(why);
                        }
                        retry_at.insert(camera, started.elapsed() + CURSOR_RETRY);
                    }
                }
            }
            if !wanted.is_empty() {
                match start(options, &records, wanted, after) {
                    Ok(r) => {
                        let control = r.control.clone();
                        let at: BTreeMap<String, Duration> = r
                            .cameras
                            .keys()
                            .filter_map(|c| held.get(c).map(|l| (c.clone(), l.confirmed_at)))
                            .collect();
                        watch(&mut |w| {
                            w.pipeline = Some(control.clone());
                            w.confirmed_at = at.clone();
                        });
                        running = Some(r);
                        summary.pipelines += 1;
                    }
                    Err(e) => {
                        // Nothing runs: the cameras are given back for others to try, and this
                        // worker claims nothing for a while.
                        tracing::warn!("worker {me}: cannot start its cameras: {e}");
                        let leases = std::mem::take(&mut held);
                        release(
                            fleet,
                            leases.into_iter().map(|(c, l)| (c, l.revision)).collect(),
                            &mut summary,
                        );
                        backoff_until = Some(started.elapsed() + FAILED_START_BACKOFF);
                    }
                }
            }
        }
        // A file job: tended while it runs, and one taken when there is room.
        job = job.and_then(|j| tend_job(fleet, me, j, started.elapsed(), &mut summary));
        let room = held.len() < options.max_streams
            && backoff_until.is_none_or(|t| started.elapsed() >= t);
        if job.is_none() && room && last_poll.is_none_or(|t| now >= t + JOB_POLL_EVERY) {
            last_poll = Some(now);
            match take_job(fleet, &queue, options, &records, started, &mut summary) {
                Ok(taken) => job = taken,
                Err(e) => tracing::warn!("{e}"),
            }
        }
        std::thread::sleep(options.tick);
    }
    // Asked to stop: the cameras stop, then their leases go back at once, so they move now;
    // the file job goes back to the queue.
    if let Some(j) = &job {
        j.control.request_stop();
    }
    if let Some(r) = running.take() {
        stop(me, r);
    }
    if let Some(j) = job.take() {
        finish_job(fleet, me, j, &mut summary);
    }
    watch(&mut |w| w.done = true);
    let _ = dog.join();
    to_release.extend(held.into_iter().map(|(c, l)| (c, l.revision)));
    release(fleet, to_release, &mut summary);
    if let Err(e) = fleet.leave(me) {
        tracing::warn!("{e}");
    }
    Ok(summary)
}

/// Looks after a running job: says it is still being worked on, and ends it once its pipeline
/// has (`None` then). A worker that cannot tell JetStream in time stops the job, for it will be
/// delivered to another.
fn tend_job(
    fleet: &Fleet,
    me: &str,
    mut job: RunningJob,
    now: Duration,
    summary: &mut WorkerSummary,
) -> Option<RunningJob> {
    if job.thread.is_finished() {
        finish_job(fleet, me, job, summary);
        return None;
    }
    // Late already (this loop was held up): JetStream may have given the job to another
    // worker, so it stops here whatever the next word says.
    let late = now >= job.answered_at + JOB_ACK_WAIT * 4 / 5;
    if !late && now >= job.answered_at + JOB_ACK_WAIT / 4 {
        match fleet.answer_job(&job.taken, AckKind::Progress) {
            Ok(()) => job.answered_at = now,
            Err(e) => tracing::warn!("{e}"),
        }
        job.record.frames = job.tally.frames_stored.load(Ordering::Relaxed);
        if let Err(e) = fleet.put_job(&job.record) {
            tracing::warn!("{e}");
        }
    }
    if (late || now >= job.answered_at + JOB_ACK_WAIT * 4 / 5) && !job.control.stop_requested() {
        tracing::warn!(
            "worker {me}: job {}: JetStream did not hear from this worker in time: stopping it (it goes to another worker)",
            job.record.job
        );
        job.control.request_stop();
    }
    Some(job)
}

/// Takes the next job from the queue, if any, and starts it.
fn take_job(
    fleet: &Fleet,
    queue: &JobQueue,
    options: &WorkerOptions,
    records: &super::store::RecordsStream,
    started: Instant,
    summary: &mut WorkerSummary,
) -> Result<Option<RunningJob>, FleetError> {
    let me = options.name.as_str();
    let Some(taken) = fleet.next_job(queue, JOB_POLL_WAIT)? else {
        return Ok(None);
    };
    let mut record = fleet.job(&taken.job)?.unwrap_or_else(|| JobRecord {
        job: taken.job.clone(),
        uri: taken.uri.clone(),
        state: JobState::Queued,
        worker: None,
        frames: 0,
        error: None,
        submitted: now_rfc3339(),
        attempts: 0,
        given_back: 0,
    });
    record.worker = Some(me.to_string());
    record.attempts = taken.attempt;
    // Ends the job for good (the reason said and kept), whatever writing its state gives.
    let end = |record: &mut JobRecord, error: String, summary: &mut WorkerSummary| {
        tracing::warn!("worker {me}: job {}: {error}", record.job);
        record.state = JobState::Failed;
        record.error = Some(error);
        summary.jobs_failed += 1;
        let written = fleet.put_job(record);
        fleet.answer_job(&taken, AckKind::Term)?;
        written
    };
    // Earlier deliveries that ended without a word from their worker (it died).
    let died = taken.attempt - 1 - record.given_back;
    if died >= MAX_ATTEMPTS {
        end(
            &mut record,
            format!("its worker stopped before the end {died} times"),
            summary,
        )?;
        return Ok(None);
    }
    // What an earlier attempt stored is not sent again; without knowing it, the job goes back.
    let stored = match fleet.stored_keys(&taken.job) {
        Ok(stored) => stored,
        Err(e) => {
            give_back(fleet, &taken, &mut record);
            return Err(e);
        }
    };
    let tally = Arc::new(Tally::default());
    let sink = RecordsSink::for_job(
        records.clone(),
        me,
        JobKeys {
            job: taken.job.clone(),
            stored,
        },
        tally.clone(),
    );
    let mut config = options.template.clone();
    let mut source = config.source.clone();
    source.name = Some(taken.job.clone());
    source.input = taken.uri.clone();
    config.sources = vec![source];
    config.source = Default::default();
    // The cameras' pipeline serves the metrics.
    config.metrics.listen = None;
    let built = pipeline::build_stages(&config);
    let mut stages = match built {
        Ok(stages) => stages,
        Err(e) => {
            end(&mut record, e.to_string(), summary)?;
            return Ok(None);
        }
    };
    stages.sinks.push(Box::new(sink));
    record.state = JobState::Running;
    record.error = None;
    if let Err(e) = fleet.put_job(&record) {
        tracing::warn!("{e}");
    }
    let control = Control::new();
    let thread_control = control.clone();
    let thread = match std::thread::Builder::new()
        .name("worker-job".into())
        .spawn(move || pipeline::run_stages(&config, stages, thread_control, RunHooks::default()))
    {
        Ok(thread) => thread,
        Err(e) => {
            give_back(fleet, &taken, &mut record);
            return Err(FleetError::Nats {
                url: fleet.shown().to_string(),
                what: format!("job {}", taken.job),
                reason: format!("cannot start a pipeline thread: {e}"),
            });
        }
    };
    tracing::info!(
        "worker {me}: took job {} ({}, attempt {})",
        taken.job,
        crate::redact::url(&taken.uri),
        taken.attempt
    );
    Ok(Some(RunningJob {
        taken,
        record,
        control,
        thread,
        tally,
        answered_at: started.elapsed(),
    }))
}

/// Gives a job back to the queue at once (this worker cannot run it now; not counted against
/// it).
fn give_back(fleet: &Fleet, taken: &TakenJob, record: &mut JobRecord) {
    record.state = JobState::Queued;
    record.given_back += 1;
    if let Err(e) = fleet.put_job(record) {
        tracing::warn!("{e}");
    }
    if let Err(e) = fleet.answer_job(taken, AckKind::Nak(Some(Duration::from_secs(1)))) {
        tracing::warn!("{e}");
    }
}

/// Waits for a job's pipeline and ends the job: done once every record is stored, failed when
/// its file could not be read, else back to the queue.
fn finish_job(fleet: &Fleet, me: &str, job: RunningJob, summary: &mut WorkerSummary) {
    let RunningJob {
        taken,
        mut record,
        thread,
        tally,
        ..
    } = job;
    let outcome = thread.join();
    if let Ok(Ok(run)) = &outcome {
        for line in run.lines() {
            tracing::info!("worker {me}: job {}: {line}", record.job);
        }
    }
    record.frames = tally.frames_stored.load(Ordering::Relaxed);
    let lost = tally.lost.load(Ordering::Relaxed);
    let (state, error, answer) = match outcome {
        Err(_) => (
            JobState::Queued,
            Some("its pipeline panicked; to be run again".to_string()),
            AckKind::Nak(None),
        ),
        Ok(Err(e)) => (JobState::Failed, Some(e.to_string()), AckKind::Term),
        Ok(Ok(_)) if lost > 0 => (
            JobState::Queued,
            Some(format!(
                "{lost} records were not stored by JetStream; to be run again"
            )),
            AckKind::Nak(Some(Duration::from_secs(1))),
        ),
        Ok(Ok(run)) if run.interrupted => (JobState::Queued, None, AckKind::Nak(None)),
        // An output of the template closed (a broken pipe): writing stopped for every sink.
        Ok(Ok(run)) if run.output_closed => (
            JobState::Queued,
            Some("an output closed before the end; to be run again".to_string()),
            AckKind::Nak(Some(Duration::from_secs(1))),
        ),
        Ok(Ok(run)) => match run.streams.iter().find_map(|s| s.failure.clone()) {
            Some(failure) => (JobState::Failed, Some(failure), AckKind::Term),
            None => (JobState::Done, None, AckKind::Ack),
        },
    };
    match state {
        JobState::Done => summary.jobs_done += 1,
        JobState::Failed => summary.jobs_failed += 1,
        _ => {
            summary.jobs_given_back += 1;
            record.given_back += 1;
        }
    }
    tracing::info!(
        "worker {me}: job {} {}: {} frames stored{}",
        record.job,
        state.as_str(),
        record.frames,
        error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    record.state = state;
    record.error = error;
    // The state first: once acknowledged, the job is gone from the queue.
    if let Err(e) = fleet.put_job(&record) {
        tracing::warn!("{e}");
    }
    if let Err(e) = fleet.answer_job(&taken, answer) {
        tracing::warn!("{e}");
    }
}

/// Stops a running pipeline and waits for it (its records are all published by then).
fn stop(me: &str, running: Running) {
    running.control.request_stop();
    match running.thread.join() {
        Ok(Ok(summary)) => {
            for line in summary.lines() {
                tracing::info!("worker {me}: {line}");
            }
            for failure in summary.failures() {
                tracing::warn!("worker {me}: {failure}");
            }
        }
        Ok(Err(e)) => tracing::warn!("worker {me}: {e}"),
        Err(_) => tracing::warn!("worker {me}: the pipeline panicked"),
    }
}

/// Starts a pipeline over `cameras`, its records also published to JetStream, each camera's
/// numbered on from `after`.
fn start(
    options: &WorkerOptions,
    records: &super::store::RecordsStream,
    cameras: BTreeMap<String, CameraSpec>,
    after: BTreeMap<String, super::continuity::Cursor>,
) -> Result<Running, PipelineError> {
    let mut config = options.template.clone();
    config.sources = cameras
        .values()
        .map(|spec| {
            let mut source = config.source.clone();
            source.name = Some(spec.camera.clone());
            source.input = spec.uri.clone();
            // Checked when the camera was added: auto (0) or 1 to 1000 frames.
            source.detect_every = spec.detect_every.as_deref().and_then(|n| match n {
                "auto" => Some(0),
                n => n.parse().ok(),
            });
            source
        })
        .collect();
    config.source = Default::default();
    let mut stages = pipeline::build_stages(&config)?;
    let run_id = format!("{}-{}", options.name, unix_now_ms() as u64);
    stages.sinks.push(Box::new(RecordsSink::new(
        records.clone(),
        &options.name,
        &run_id,
        after,
    )));
    let control = Control::new();
    let thread_control = control.clone();
    let ended = Arc::new(Mutex::new(BTreeMap::new()));
    let hooks = RunHooks {
        stream_end: Some(Arc::new({
            let ended = ended.clone();
            let control = control.clone();
            move |camera: &str, failure: Option<&str>| {
                // Every stream ends when the pipeline is stopped: only a failure counts then.
                if failure.is_none() && control.stop_requested() {
                    return;
                }
                if let Ok(mut ended) = ended.lock() {
                    ended.insert(
                        camera.to_string(),
                        failure.unwrap_or("its stream ended").to_string(),
                    );
                }
            }
        })),
        ..RunHooks::default()
    };
    let thread = std::thread::Builder::new()
        .name("worker-pipeline".into())
        .spawn(move || pipeline::run_stages(&config, stages, thread_control, hooks))
        .map_err(|e| PipelineError::Invalid(format!("cannot start a pipeline thread: {e}")))?;
    Ok(Running {
        cameras,
        control,
        thread,
        ended,
    })
}
