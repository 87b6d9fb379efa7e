//! `faceflow fleet …`: the fleet's cameras and status, kept in NATS JetStream.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use faceflow::fleet::store::{DEFAULT_URL, ENV_URL, NatsOptions};

/// How to reach the fleet's NATS.
#[derive(Args, Debug, Clone)]
pub struct NatsFlags {
    /// The fleet's NATS servers, comma-separated (nats:// or tls://, user:password@ allowed)
    /// [default: $FACEFLOW_NATS, else nats://127.0.0.1:4222].
    #[arg(long, value_name = "URL[,URL…]", global = true)]
    pub nats: Option<String>,
    /// A CA certificate (PEM) that vouches for the NATS servers' TLS certificates.
    #[arg(long, value_name = "FILE", global = true)]
    pub nats_ca: Option<PathBuf>,
    /// How many NATS servers keep each of the fleet's buckets and streams, 1 to 5, when they
    /// are first made [default: as many as the cluster has, at most 3].
    #[arg(long, value_name = "N", global = true, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: Option<u8>,
}

impl NatsFlags {
    pub fn options(&self) -> NatsOptions {
        NatsOptions {
            urls: self
                .nats
                .clone()
                .or_else(|| std::env::var(ENV_URL).ok().filter(|u| !u.is_empty()))
                .unwrap_or_else(|| DEFAULT_URL.to_string()),
            ca: self.nats_ca.clone(),
            replicas: self.replicas.map(usize::from),
        }
    }
}

#[derive(Args)]
pub struct FleetArgs {
    #[command(flatten)]
    pub nats: NatsFlags,
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Subcommand)]
pub enum FleetCommand {
    /// The fleet's cameras: add (or update), remove, list.
    Cameras {
        #[command(subcommand)]
        command: CamerasCommand,
    },
    /// The records stored in JetStream, as JSON Lines on standard output, oldest first; a job's
    /// record stored twice is shown once.
    Tail {
        /// Only this camera's records.
        #[arg(long, value_name = "ID", conflicts_with = "job")]
        camera: Option<String>,
        /// Only this file job's records.
        #[arg(long, value_name = "ID")]
        job: Option<String>,
        /// Then new records as they come, until Ctrl-C.
        #[arg(long)]
        follow: bool,
    },
    /// Queue video files as jobs for the workers: one job id per line.
    Submit {
        /// Files (a path the workers can read at the same place, or a URI `run --input` takes).
        #[arg(value_name = "FILE|URI", required = true)]
        inputs: Vec<String>,
    },
    /// Every file job: queued, running, done or failed, where, and how many frames are stored.
    Jobs {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every camera (running, waiting or failed, and where) and every live worker.
    Status {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CamerasCommand {
    /// Add cameras, or update those of the same id (the worker running one restarts it):
    /// ID URI, several pairs allowed.
    Add {
        /// ID URI [ID URI…]: an id of 1 to 64 ASCII letters, digits, '-' or '_', and the input
        /// as `run --input` takes it.
        #[arg(value_name = "ID URI", required = true, num_args = 2..)]
        pairs: Vec<String>,
        /// How often these cameras are searched in full: auto, or every N frames (1 to 1000).
        #[arg(long, value_name = "N|auto")]
        detect_every: Option<String>,
    },
    /// Remove cameras by id (the worker running one stops it).
    Remove {
        #[arg(value_name = "ID", required = true)]
        ids: Vec<String>,
    },
    /// The cameras, one per line.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// `faceflow worker`.
#[derive(Args)]
pub struct WorkerArgs {
    /// A pipeline file: the detector, attributes, tracking and outputs every camera runs with
    /// (its sources are the cameras the worker holds; any given are ignored).
    #[arg(value_name = "PIPELINE.toml")]
    pub pipeline: Option<PathBuf>,
    /// This worker's name in the fleet: 1 to 64 ASCII letters, digits, '-' or '_' [default: the
    /// host name and process id].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The most cameras this worker runs at once, 1 to 64.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_streams: usize,
    /// Detection only: no age, gender or race.
    #[arg(long)]
    pub no_attributes: bool,
    /// Keep records in JetStream this long, then drop the oldest (30d, 12h, …) [default: the
    /// stream's own; none when this worker makes it].
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub records_max_age: Option<std::time::Duration>,
    /// Keep at most this many bytes of records in JetStream, dropping the oldest (500MiB, 20GB,
    /// …) [default: the stream's own; no limit when this worker makes it].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub records_max_bytes: Option<u64>,
    #[command(flatten)]
    pub nats: NatsFlags,
}

fn parse_age(given: &str) -> Result<std::time::Duration, String> {
    let age = humantime::parse_duration(given).map_err(|e| format!("{e} (e.g. 30d, 12h)"))?;
    if age < std::time::Duration::from_secs(60) {
        return Err("at least 1m: records must outlive a failover".into());
    }
    Ok(age)
}

fn parse_size(given: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = given
        .parse()
        .map_err(|e| format!("{e} (e.g. 500MiB, 20GB)"))?;
    if size.as_u64() < 1 << 20 {
        return Err("at least 1MiB".into());
    }
    Ok(size.as_u64())
}
