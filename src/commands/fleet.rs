//! `faceflow fleet …`: the fleet's cameras and its status, read from and written to NATS.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::json;

use crate::cli::fleet_flags::{CamerasCommand, FleetArgs, FleetCommand, WorkerArgs};
use faceflow::fleet::store::{CameraSpec, Fleet, check_camera_id};

pub fn fleet(args: FleetArgs) -> Result<ExitCode> {
    match args.command {
        FleetCommand::Cameras { command } => match command {
            CamerasCommand::Add {
                pairs,
                detect_every,
            } => {
                let cameras = cameras_to_add(&pairs, detect_every.as_deref())?;
                let fleet = Fleet::connect(&args.nats.options())?;
                for camera in &cameras {
                    let new = fleet.put_camera(camera)?;
                    println!(
                        "{} {} {}",
                        if new { "added" } else { "updated" },
                        camera.camera,
                        faceflow::redact::url(&camera.uri)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            CamerasCommand::Remove { ids } => {
                for id in &ids {
                    check_camera_id(id)?;
                }
                let fleet = Fleet::connect(&args.nats.options())?;
                let mut missing = Vec::new();
                for id in &ids {
                    if fleet.remove_camera(id)? {
                        println!("removed {id}");
                    } else {
                        missing.push(id.as_str());
                    }
                }
                if !missing.is_empty() {
                    bail!("no such camera: {}", missing.join(", "));
                }
                Ok(ExitCode::SUCCESS)
            }
            CamerasCommand::List { json } => {
                let fleet = Fleet::connect(&args.nats.options())?;
                for camera in fleet.cameras()?.values() {
                    let uri = faceflow::redact::url(&camera.uri);
                    if json {
                        let mut line =
                            json!({"type": "camera_config", "camera": camera.camera, "uri": uri});
                        if let Some(n) = &camera.detect_every {
                            line["detect_every"] = json!(n);
                        }
                        println!("{line}");
                    } else {
                        println!(
                            "{:<20} {}{}",
                            camera.camera,
                            uri,
                            camera
                                .detect_every
                                .as_ref()
                                .map(|n| format!("  (detect every {n})"))
                                .unwrap_or_default()
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        },
        FleetCommand::Status { json } => status(&Fleet::connect(&args.nats.options())?, json),
        FleetCommand::Submit { inputs } => {
            let uris = jobs_to_submit(&inputs)?;
            let fleet = Fleet::connect(&args.nats.options())?;
            for uri in &uris {
                println!("{}", fleet.submit(uri)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Jobs { json } => jobs(&Fleet::connect(&args.nats.options())?, json),
        FleetCommand::Tail {
            camera,
            job,
            follow,
        } => {
            let id = camera.or(job);
            if let Some(id) = &id {
                check_camera_id(id)?;
            }
            let fleet = Fleet::connect(&args.nats.options())?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            fleet.tail(id.as_deref(), follow, |payload| {
                use std::io::Write;
                // A reader that went away (`| head`) ends the tail quietly.
                out.write_all(payload)
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| if follow { out.flush() } else { Ok(()) })
                    .is_ok()
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The inputs of `fleet submit` as workers will open them: each checked as `run --input` checks
/// it, a local path made absolute; a live source is refused (it is a camera).
fn jobs_to_submit(inputs: &[String]) -> Result<Vec<String>> {
    let mut uris = Vec::new();
    for input in inputs {
        let kind = faceflow::sources::parse_input(input, None)?;
        let live = match &kind {
            faceflow::sources::InputKind::Uri { live, .. } => *live,
            faceflow::sources::InputKind::TestPattern(p) => p.live,
        };
        if live {
            bail!(
                "{}: a live source is a camera, not a file job: add it with `faceflow fleet cameras add ID URI`",
                faceflow::redact::url(input)
            );
        }
        let is_path = !input.contains("://");
        uris.push(if is_path {
            std::path::absolute(input)
                .map_err(|e| anyhow::anyhow!("{input}: {e}"))?
                .to_string_lossy()
                .into_owned()
        } else {
            input.clone()
        });
    }
    Ok(uris)
}

/// A line of `fleet status --json` or `fleet jobs --json`: its fields in the documented order.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line<'a> {
    Camera {
        camera: &'a str,
        uri: String,
        state: &'a str,
        worker: Option<&'a str>,
        since: Option<&'a str>,
        error: Option<&'a str>,
    },
    Worker {
        worker: &'a str,
        cameras: Vec<&'a str>,
        max_streams: usize,
        seen: &'a str,
    },
    Job {
        job: &'a str,
        uri: String,
        state: &'a str,
        worker: Option<&'a str>,
        frames: u64,
        error: Option<String>,
        attempts: i64,
        submitted: &'a str,
    },
}

fn print_json(line: &Line<'_>) -> Result<()> {
    println!("{}", serde_json::to_string(line)?);
    Ok(())
}

/// Every job, oldest first: one JSON object per line, or a table. A job whose worker is gone
/// reads `queued` again (JetStream delivers it anew).
fn jobs(fleet: &Fleet, json: bool) -> Result<ExitCode> {
    let live = fleet.workers()?;
    let mut jobs: Vec<_> = fleet.jobs()?.into_values().collect();
    jobs.sort_by(|a, b| a.submitted.cmp(&b.submitted).then(a.job.cmp(&b.job)));
    if !json {
        println!(
            "{:<32} {:<8} {:<20} {:>8}  FILE",
            "JOB", "STATE", "WORKER", "FRAMES"
        );
    }
    for job in &jobs {
        let mut state = job.state.as_str();
        let mut error = job.error.clone();
        if state == "running" && job.worker.as_ref().is_none_or(|w| !live.contains_key(w)) {
            state = "queued";
            error = Some(format!(
                "worker {} stopped; JetStream gives the job to another",
                job.worker.as_deref().unwrap_or("?")
            ));
        }
        let uri = faceflow::redact::url(&job.uri).into_owned();
        if json {
            print_json(&Line::Job {
                job: &job.job,
                uri,
                state,
                worker: job.worker.as_deref(),
                frames: job.frames,
                error,
                attempts: job.attempts,
                submitted: &job.submitted,
            })?;
        } else {
            println!(
                "{:<32} {:<8} {:<20} {:>8}  {}{}",
                job.job,
                state,
                job.worker.as_deref().unwrap_or("-"),
                job.frames,
                uri,
                error.map(|e| format!("  ({e})")).unwrap_or_default()
            );
        }
    }
    if !json && jobs.is_empty() {
        println!("(no job)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The cameras of `ID URI` pairs, each checked as `run --input` checks an input; an id given
/// twice is refused.
fn cameras_to_add(pairs: &[String], detect_every: Option<&str>) -> Result<Vec<CameraSpec>> {
    if !pairs.len().is_multiple_of(2) {
        bail!(
            "fleet cameras add: ID URI pairs expected; {} has no URI",
            pairs[pairs.len() - 1]
        );
    }
    if let Some(n) = detect_every {
        let frames = crate::cli::run_flags::parse_detect_every(n)
            .map_err(|e| anyhow::anyhow!("--detect-every: {e}"))?;
        if frames > 1000 {
            bail!("--detect-every {n}: must be auto or 1 to 1000 frames");
        }
    }
    let mut seen = BTreeSet::new();
    let mut cameras = Vec::new();
    for pair in pairs.chunks(2) {
        let (id, uri) = (&pair[0], &pair[1]);
        check_camera_id(id)?;
        if !seen.insert(id.clone()) {
            bail!("camera {id} given twice");
        }
        faceflow::sources::parse_input(uri, None)
            .map_err(|e| anyhow::anyhow!("camera {id}: {e}"))?;
        cameras.push(CameraSpec {
            camera: id.clone(),
            uri: uri.clone(),
            detect_every: detect_every.map(|n| n.to_ascii_lowercase()),
        });
    }
    Ok(cameras)
}

/// Every camera and every live worker: one JSON object per line, or two tables.
fn status(fleet: &Fleet, json: bool) -> Result<ExitCode> {
    let cameras = fleet.cameras()?;
    let leases = fleet.leases()?;
    let workers = fleet.workers()?;
    let room: usize = workers.values().map(|w| w.max_streams).sum();
    let mut held: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (camera, lease) in &leases {
        held.entry(lease.worker.as_str()).or_default().push(camera);
    }
    let camera_lines: Vec<Line> = cameras
        .values()
        .map(|camera| {
            let lease = leases.get(&camera.camera);
            let (state, error) = match lease {
                Some(l) if l.error.is_some() => ("failed", l.error.as_deref()),
                Some(_) => ("running", None),
                None if workers.is_empty() => ("waiting", Some("no live worker")),
                None if room < cameras.len() => ("waiting", Some("no worker has room")),
                None => ("waiting", Some("not yet claimed")),
            };
            Line::Camera {
                camera: &camera.camera,
                uri: faceflow::redact::url(&camera.uri).into_owned(),
                state,
                worker: lease.map(|l| l.worker.as_str()),
                since: lease.map(|l| l.since.as_str()),
                error,
            }
        })
        .collect();
    let worker_lines: Vec<Line> = workers
        .values()
        .map(|w| Line::Worker {
            worker: &w.worker,
            cameras: held.get(w.worker.as_str()).cloned().unwrap_or_default(),
            max_streams: w.max_streams,
            seen: &w.seen,
        })
        .collect();
    if json {
        for line in camera_lines.iter().chain(&worker_lines) {
            print_json(line)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<9} {:<20} {:<25} URI",
        "CAMERA", "STATE", "WORKER", "SINCE"
    );
    for line in &camera_lines {
        if let Line::Camera {
            camera,
            uri,
            state,
            worker,
            since,
            error,
        } = line
        {
            let why = error.map(|why| format!("  ({why})")).unwrap_or_default();
            println!(
                "{camera:<20} {state:<9} {:<20} {:<25} {uri}{why}",
                worker.unwrap_or("-"),
                since.unwrap_or("-"),
            );
        }
    }
    println!();
    println!(
        "{:<20} {:>11} {:<25} CAMERAS",
        "WORKER", "MAX_STREAMS", "SEEN"
    );
    for line in &worker_lines {
        if let Line::Worker {
            worker,
            cameras,
            max_streams,
            seen,
        } = line
        {
            println!(
                "{worker:<20} {max_streams:>11} {seen:<25} {}",
                cameras.join(",")
            );
        }
    }
    if workers.is_empty() {
        println!("(no live worker)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `faceflow worker`: joins the fleet until SIGTERM or Ctrl-C.
pub fn worker(args: WorkerArgs) -> Result<ExitCode> {
    if !(1..=64).contains(&args.max_streams) {
        bail!(
            "--max-streams {}: must be from 1 to 64 cameras",
            args.max_streams
        );
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => default_name(),
    };
    check_camera_id(&name).map_err(|_| {
        anyhow::anyhow!("--name {name}: a worker name is 1 to 64 ASCII letters, digits, '-' or '_'")
    })?;
    let mut template = match &args.pipeline {
        Some(path) => faceflow::pipeline::PipelineConfig::load(path)?,
        None => faceflow::pipeline::PipelineConfig::default(),
    };
    template.sources.clear();
    template.source = Default::default();
    // Records go to JetStream; a local file would be rewritten at every restart of the
    // pipeline.
    template.json.path = "/dev/null".into();
    if args.no_attributes {
        template.attributes.enabled = false;
    }
    faceflow::runtime::use_device(template.runtime.device)?;
    // A worker must renew its leases in time: it cannot wait on a failing request as long as
    // a command can (its next turn tries again).
    let fleet = Fleet::connect(&args.nats.options())?;
    let control = faceflow::graph::Control::new();
    super::on_interrupt("handing the cameras over", {
        let control = control.clone();
        move || control.request_stop()
    });
    faceflow::say!(
        "faceflow: worker {name} joined the fleet at {} (up to {} cameras)",
        fleet.shown(),
        args.max_streams
    );
    let options = faceflow::fleet::worker::WorkerOptions {
        name: name.clone(),
        max_streams: args.max_streams,
        template,
        tick: std::time::Duration::from_millis(500),
        retention: faceflow::fleet::store::Retention {
            max_age: args.records_max_age,
            max_bytes: args.records_max_bytes,
        },
    };
    let summary = faceflow::fleet::worker::run(&fleet, &options, &control)?;
    faceflow::say!(
        "faceflow: worker {name} left the fleet: {} cameras taken, {} handed over, {} lost; {} file jobs done, {} failed, {} given back",
        summary.claimed,
        summary.released,
        summary.lost,
        summary.jobs_done,
        summary.jobs_failed,
        summary.jobs_given_back
    );
    Ok(ExitCode::SUCCESS)
}

/// The host name and process id, as a worker name.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = faceflow::fleet::store::id_part(host.trim(), 48, "worker");
    format!("{host}-{}", std::process::id())
}
