//! The fleet's commands against a real NATS JetStream cluster (nats-server 2.15, installed by
//! scripts/deps.sh into .nats/bin), started here on 127.0.0.1 with its own ports and folders.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::metrics::{free_port, get};
use crate::util::*;

/// nats-server, when installed; under CI its absence fails.
fn nats_server() -> Option<PathBuf> {
    let path = project_root().join(".nats/bin/nats-server");
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} missing under CI (scripts/deps.sh installs it)",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found (scripts/deps.sh installs it)",
        path.display()
    );
    None
}

/// One server of a cluster: its client port, monitoring port and process.
pub(crate) struct Node {
    pub port: u16,
    http: u16,
    child: Option<Child>,
    config: PathBuf,
    program: PathBuf,
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::File::create(self.config.with_extension("log")).unwrap();
        self.child = Some(
            Command::new(&self.program)
                .arg("-c")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// Whether JetStream answers on this node.
    fn ready(&self) -> bool {
        get(self.http, "/healthz?js-enabled-only=true").is_some_and(|r| r.contains("\"ok\""))
    }

    /// How many servers' client URLs the node gives clients (itself and the routes it has).
    fn client_urls(&self) -> usize {
        get(self.http, "/varz")
            .and_then(|r| serde_json::from_str::<Value>(&r[r.find('{')?..]).ok())
            .and_then(|v| v["connect_urls"].as_array().map(Vec::len))
            .unwrap_or(0)
            .max(1)
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill -{signal}");
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of `n` nodes (a single server for 1), each with its own store folder.
pub(crate) struct Cluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(program: &Path, n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, http, route)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("store-{i}"));
            let mut text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n\
                 jetstream {{ store_dir: \"{}\" }}\n",
                store.display()
            );
            if n > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, _, r))| format!("\"nats-route://127.0.0.1:{r}\""))
                    .collect();
                text.push_str(&format!(
                    "cluster {{ name: faceflow, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    routes.join(", ")
                ));
            }
            let config = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&config, text).unwrap();
            let mut node = Node {
                port: *port,
                http: *http,
                child: None,
                config,
                program: program.to_path_buf(),
            };
            node.spawn();
            nodes.push(node);
        }
        let started = Instant::now();
        // Ready: JetStream up, and every node tells clients of all n (the default replica count
        // of the buckets is read from that list, see `fleet::store`).
        while !nodes
            .iter()
            .all(|node| node.ready() && node.client_urls() >= n)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "NATS cluster not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes, _dir: dir }
    }

    /// The client URLs of every node, as `--nats` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn fleet(urls: &str, args: &[&str]) -> std::process::Output {
    output_within(
        bin().arg("fleet").args(["--nats", urls]).args(args),
        Duration::from_secs(60),
    )
}

fn fleet_ok(urls: &str, args: &[&str]) -> String {
    let out = fleet(urls, args);
    assert!(
        out.status.success(),
        "fleet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Cameras added, updated, listed (passwords masked), removed; the status says each waits for a
/// worker; on a 3-node cluster, and still with one node killed.
#[test]
fn cameras_are_kept_in_the_cluster_and_survive_a_dead_node() {
    let Some(program) = nats_server() else {
        return;
    };
    let mut cluster = Cluster::start(&program, 3);
    let urls = cluster.urls();
    let added = fleet_ok(
        &urls,
        &[
            "cameras",
            "add",
            "lobby",
            "rtsp://admin:secret@cam1/stream",
            "door",
            "testsrc://ball?live=true",
        ],
    );
    assert_eq!(
        added,
        "added lobby rtsp://admin:***@cam1/stream\nadded door testsrc://ball?live=true\n"
    );
    let updated = fleet_ok(
        &urls,
        &[
            "cameras",
            "add",
            "door",
            "testsrc://snow?live=true",
            "--detect-every",
            "auto",
        ],
    );
    assert_eq!(updated, "updated door testsrc://snow?live=true\n");
    let list = json_lines(&fleet_ok(&urls, &["cameras", "list", "--json"]));
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["camera"], "door");
    assert_eq!(list[0]["detect_every"], "auto");
    assert_eq!(list[1]["uri"], "rtsp://admin:***@cam1/stream");
    let status = json_lines(&fleet_ok(&urls, &["status", "--json"]));
    assert_eq!(status.len(), 2, "{status:?}");
    for camera in &status {
        assert_eq!(camera["type"], "camera");
        assert_eq!(camera["state"], "waiting");
        assert_eq!(camera["error"], "no live worker");
    }
    // The buckets are replicated on all three nodes.
    let jsz = get(cluster.nodes[1].http, "/jsz?streams=true&config=true").unwrap();
    let body = &jsz[jsz.find('{').unwrap()..];
    let jsz: Value = serde_json::from_str(body).unwrap();
    let streams = jsz["account_details"][0]["stream_detail"]
        .as_array()
        .unwrap();
    for bucket in ["cameras", "leases", "workers"] {
        let name = format!("KV_faceflow-{bucket}");
        let stream = streams.iter().find(|s| s["name"] == name.as_str()).unwrap();
        assert_eq!(stream["config"]["num_replicas"], 3, "{name}");
    }
    // With a node gone, the others still answer.
    cluster.nodes[0].kill();
    let others = cluster.nodes[1..]
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",");
    let started = Instant::now();
    loop {
        let out = fleet(&others, &["cameras", "list", "--json"]);
        if out.status.success() {
            assert_eq!(json_lines(&String::from_utf8_lossy(&out.stdout)).len(), 2);
            break;
        }
        // A new leader for a bucket that the dead node led takes a few seconds.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        fleet_ok(&others, &["cameras", "remove", "lobby"]),
        "removed lobby\n"
    );
    let list = json_lines(&fleet_ok(&others, &["cameras", "list", "--json"]));
    assert_eq!(list.len(), 1);
    let e = one_error_line(&fleet(&others, &["cameras", "remove", "lobby"]));
    assert!(e.contains("no such camera: lobby"), "{e}");
}

/// Unreachable NATS, a bad camera URI, a bad id and a camera id given twice: one clear line
/// each, exit status 1, nothing written.
#[test]
fn fleet_mistakes_are_one_clear_line() {
    let Some(program) = nats_server() else {
        return;
    };
    let dead = format!("nats://user:secret@127.0.0.1:{}", free_port());
    let e = one_error_line(&fleet(&dead, &["status"]));
    assert!(
        e.contains("cannot connect") && e.contains("user:***@") && !e.contains("secret"),
        "{e}"
    );
    let cluster = Cluster::start(&program, 1);
    let urls = cluster.urls();
    for (args, says) in [
        (vec!["cameras", "add", "a", "nosuch:/x"], "camera a: "),
        (
            vec!["cameras", "add", "a", "/no/such/file.mp4"],
            "camera a: ",
        ),
        (
            vec!["cameras", "add", "a.b", "testsrc://ball"],
            "1 to 64 ASCII",
        ),
        (
            vec![
                "cameras",
                "add",
                "a",
                "testsrc://ball",
                "a",
                "testsrc://snow",
            ],
            "camera a given twice",
        ),
        (
            vec!["cameras", "add", "a", "testsrc://ball", "b"],
            "b has no URI",
        ),
        (
            vec![
                "cameras",
                "add",
                "a",
                "testsrc://ball",
                "--detect-every",
                "often",
            ],
            "--detect-every",
        ),
    ] {
        let e = one_error_line(&fleet(&urls, &args));
        assert!(e.contains(says), "{args:?}: {e}");
    }
    assert_eq!(fleet_ok(&urls, &["cameras", "list"]), "");
}

/// A worker process of the fleet, killed when dropped (a failed test leaves none behind).
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker process of the fleet, detection only, on `urls`.
fn worker(urls: &str, name: &str, dir: &Path) -> Worker {
    Worker(
        bin()
            .args(["worker", "--nats", urls, "--name", name, "--no-attributes"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Camera → worker, as `fleet status --json` says.
fn placement(urls: &str) -> std::collections::BTreeMap<String, String> {
    let out = fleet(urls, &["status", "--json"]);
    if !out.status.success() {
        return Default::default();
    }
    json_lines(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|l| l["type"] == "camera" && l["state"] == "running")
        .map(|l| {
            (
                l["camera"].as_str().unwrap().to_string(),
                l["worker"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Cameras per worker, in the workers' order.
fn counts(placement: &std::collections::BTreeMap<String, String>, workers: &[&str]) -> Vec<usize> {
    workers
        .iter()
        .map(|w| placement.values().filter(|v| v == w).count())
        .collect()
}

/// Waits up to `limit` for `done` on the placement; how long it took.
fn until(
    urls: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = placement(urls);
        if done(&now) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Messages stored in the records stream, as a node's monitoring says.
fn records_stored(node: &Node) -> u64 {
    let jsz = get(node.http, "/jsz?streams=true").unwrap_or_default();
    let Some(body) = jsz.find('{').map(|i| &jsz[i..]) else {
        return 0;
    };
    let jsz: Value = serde_json::from_str(body).unwrap_or_default();
    jsz["account_details"][0]["stream_detail"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "faceflow-records")
        .and_then(|s| s["state"]["messages"].as_u64())
        .unwrap_or(0)
}

/// Three workers and six live cameras on a 3-node cluster: every camera runs, two per worker;
/// a worker killed with -9 has its cameras running elsewhere within the lease time and a few
/// seconds; back, it takes its share again; SIGTERM hands a worker's cameras over at once.
/// Records reach the stream all along.
#[test]
fn workers_share_cameras_and_take_over_from_a_dead_one() {
    let Some(program) = nats_server() else {
        return;
    };
    let cluster = Cluster::start(&program, 3);
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let mut add = vec!["cameras".to_string(), "add".to_string()];
    for (i, pattern) in [
        "ball",
        "snow",
        "smpte",
        "checkers-8",
        "gradient",
        "pinwheel",
    ]
    .iter()
    .enumerate()
    {
        add.push(format!("cam{i}"));
        add.push(format!(
            "testsrc://{pattern}?live=true&frames=0&size=160x120&fps=10"
        ));
    }
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    fleet_ok(&urls, &add);
    let names = ["wa", "wb", "wc"];
    let mut workers: Vec<Worker> = names.iter().map(|n| worker(&urls, n, dir.path())).collect();
    let spread = until(&urls, Duration::from_secs(30), "spread", |p| {
        p.len() == 6 && counts(p, &names) == [2, 2, 2]
    });
    eprintln!("six cameras on three workers in {spread:?}");
    let stored = records_stored(&cluster.nodes[0]);
    assert!(stored > 0, "no records in the stream");
    // kill -9: within the lease (10 s) and a few seconds, wb and wc run wa's cameras.
    let _ = workers[0].0.kill();
    let _ = workers[0].0.wait();
    let failover = until(&urls, Duration::from_secs(15), "failover", |p| {
        p.len() == 6 && counts(p, &names[1..]) == [3, 3]
    });
    eprintln!("failover after kill -9 in {failover:?}");
    // Back: the others hand over, one at a time, until it is balanced.
    workers[0] = worker(&urls, "wa", dir.path());
    let rebalance = until(&urls, Duration::from_secs(20), "rebalance", |p| {
        p.len() == 6 && counts(p, &names) == [2, 2, 2]
    });
    eprintln!("rebalanced in {rebalance:?}");
    // SIGTERM: wb's cameras move within a few seconds.
    let status = Command::new("kill")
        .args(["-TERM", &workers[1].0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let handoff = until(&urls, Duration::from_secs(6), "handoff on SIGTERM", |p| {
        p.len() == 6 && p.values().all(|w| w != "wb")
    });
    eprintln!("handed over on SIGTERM in {handoff:?}");
    let out = workers[1].0.wait().unwrap();
    assert!(out.success(), "wb exited {out:?}");
    assert!(records_stored(&cluster.nodes[0]) > stored);
    // kill -9 a NATS node (the first, which the workers reached first): records keep coming,
    // the cameras keep running, and none is lost (frame numbers stay consecutive, below).
    let mut cluster = cluster;
    cluster.nodes[0].kill();
    let urls = cluster.nodes[1..]
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",");
    let before = records_stored(&cluster.nodes[1]);
    let started = Instant::now();
    while records_stored(&cluster.nodes[1]) < before + 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "records stopped after a NATS node died: {} then {}",
            before,
            records_stored(&cluster.nodes[1])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "200 more records stored {:?} after a NATS node died",
        started.elapsed()
    );
    until(
        &urls,
        Duration::from_secs(20),
        "cameras after a NATS node died",
        |p| p.len() == 6 && p.values().all(|w| w != "wb"),
    );
    // Stopped with SIGTERM, the workers store what they have before they go.
    for w in [&workers[0], &workers[2]] {
        let _ = Command::new("kill")
            .args(["-TERM", &w.0.id().to_string()])
            .status();
    }
    for w in [0, 2] {
        let out = workers[w].0.wait().unwrap();
        assert!(out.success(), "{} exited {out:?}", names[w]);
    }
    drop(workers);
    // The records read back: each camera's come from one worker at a time, never two at once
    // (by the clock time of their frames), and the tail of all is the tails of each.
    let mut total = 0;
    for i in 0..6 {
        let camera = format!("cam{i}");
        let records = json_lines(&fleet_ok(&urls, &["tail", "--camera", &camera]));
        assert!(!records.is_empty(), "{camera}: no records");
        total += records.len();
        for r in &records {
            assert_eq!(r["stream"], camera.as_str(), "{r}");
        }
        let runs = one_worker_at_a_time(&camera, &records);
        assert!(
            runs.len() <= 6,
            "{camera}: {} runs of workers: {runs:?}",
            runs.len()
        );
        // One stream per camera: frame numbers go on across workers and restarts (each once,
        // each worker's after the one before), and each worker's first frame says how long
        // there was none. A live source drops frames when its worker falls behind, so numbers
        // may skip; a record sent again after a NATS node died may be stored after later ones;
        // records lost on the way to JetStream would be in the workers' logs (below).
        let mut frames: Vec<&Value> = records.iter().filter(|r| r["type"] == "frame").collect();
        let mut numbers: Vec<u64> = frames
            .iter()
            .map(|r| r["frame"].as_u64().unwrap())
            .collect();
        numbers.sort_unstable();
        let n = numbers.len();
        numbers.dedup();
        assert_eq!(numbers.len(), n, "{camera}: a frame number came twice");
        let skipped = numbers.last().unwrap() - numbers[0] + 1 - n as u64;
        // In the order the frames were seen (their clock time), not the order stored (see
        // above): numbers must follow it across workers.
        frames.sort_by_key(|r| (r["time"].as_str().map(str::to_string), r["frame"].as_u64()));
        // Runs of one worker in the stream's order: (worker, lowest and highest frame).
        let mut by_worker: Vec<(String, u64, u64)> = Vec::new();
        for pair in frames.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a["worker"] != b["worker"] {
                assert!(
                    b["gap_before_ms"].as_f64().is_some_and(|g| g >= 0.0),
                    "{camera}: another worker's first frame without gap_before_ms: {b}"
                );
            }
        }
        for r in &frames {
            let (w, f) = (r["worker"].as_str().unwrap(), r["frame"].as_u64().unwrap());
            match by_worker.last_mut() {
                Some((last, lo, hi)) if last == w => {
                    *lo = (*lo).min(f);
                    *hi = (*hi).max(f);
                }
                _ => by_worker.push((w.to_string(), f, f)),
            }
        }
        for pair in by_worker.windows(2) {
            assert!(
                pair[1].1 > pair[0].2,
                "{camera}: {} numbered from {} after {} reached {}",
                pair[1].0,
                pair[1].1,
                pair[0].0,
                pair[0].2
            );
        }
        eprintln!(
            "{camera}: {} frames stored, {skipped} skipped by the source",
            frames.len()
        );
    }
    let all = fleet_ok(&urls, &["tail"]);
    assert_eq!(all.lines().count(), total);
    assert_eq!(total as u64, records_stored(&cluster.nodes[1]));
    // No worker gave a record up (it says so when JetStream never acknowledged one).
    for name in names {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert!(!log.contains("(lost)"), "{name} lost records:\n{log}");
    }
}

/// The jobs as `fleet jobs --json` says, by job id.
fn jobs(urls: &str) -> std::collections::BTreeMap<String, Value> {
    json_lines(&fleet_ok(urls, &["jobs", "--json"]))
        .into_iter()
        .map(|j| (j["job"].as_str().unwrap().to_string(), j))
        .collect()
}

/// Waits up to `limit` for `done` on a job's line; that line.
fn until_job(urls: &str, job: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let line = jobs(urls).remove(job).unwrap_or_default();
        if done(&line) {
            return line;
        }
        assert!(
            started.elapsed() < limit,
            "job {job}: not within {limit:?}: {line}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A job's frame numbers, from `fleet tail --job`, each checked to come once.
fn job_frames(urls: &str, job: &str) -> (Vec<Value>, Vec<u64>) {
    let records = json_lines(&fleet_ok(urls, &["tail", "--job", job]));
    let mut frames: Vec<u64> = records
        .iter()
        .filter(|r| r["type"] == "frame")
        .map(|r| r["frame"].as_u64().unwrap())
        .collect();
    let n = frames.len();
    frames.sort_unstable();
    frames.dedup();
    assert_eq!(frames.len(), n, "job {job}: a frame came twice");
    (records, frames)
}

/// File jobs on a 3-node cluster: a worker killed with -9 in the middle of a real clip leaves
/// its job to another, and every frame of it is stored exactly once; a file that is not a video
/// ends `failed` with the reason; a worker stopped with SIGTERM gives its job back at once; a
/// job's records are those `run` writes for the file.
#[test]
fn file_jobs_store_every_frame_once_across_a_killed_worker() {
    let Some(program) = nats_server() else {
        return;
    };
    let Some(clip) = shared_data("video/intel_one-by-one-person-detection.mp4") else {
        return;
    };
    let Some(short) = shared_data("video/face_recognition_short_hamilton_clip.mp4") else {
        return;
    };
    let cluster = Cluster::start(&program, 3);
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let not_video = dir.path().join("notes.mp4");
    std::fs::write(&not_video, "not a video\n").unwrap();
    let e = one_error_line(&fleet(&urls, &["submit", "/no/such/clip.mp4"]));
    assert!(e.contains("/no/such/clip.mp4"), "{e}");
    let e = one_error_line(&fleet(&urls, &["submit", "testsrc://ball?live=true"]));
    assert!(e.contains("a live source is a camera"), "{e}");
    let clip = clip.to_str().unwrap();
    let submitted = fleet_ok(
        &urls,
        &[
            "submit",
            clip,
            short.to_str().unwrap(),
            not_video.to_str().unwrap(),
        ],
    );
    let ids: Vec<&str> = submitted.lines().collect();
    assert_eq!(ids.len(), 3, "{submitted}");
    assert!(ids[0].starts_with("intel_one-by-one-person-detection-"));
    for id in &ids {
        assert_eq!(jobs(&urls)[*id]["state"], "queued");
    }
    // One worker takes the long clip first; killed once some of its frames are stored.
    let mut wa = worker(&urls, "wa", dir.path());
    let running = until_job(&urls, ids[0], Duration::from_secs(30), |j| {
        j["state"] == "running" && j["frames"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(running["worker"], "wa");
    let _ = wa.0.kill();
    let _ = wa.0.wait();
    let killed_at = Instant::now();
    // The others: the job comes back after JetStream's wait for a word (10 s).
    let wb = worker(&urls, "wb", dir.path());
    let wc = worker(&urls, "wc", dir.path());
    let done = until_job(&urls, ids[0], Duration::from_secs(90), |j| {
        j["state"] == "done"
    });
    eprintln!("killed job done {:?} after the kill", killed_at.elapsed());
    assert_eq!(done["attempts"], 2, "{done}");
    assert_ne!(done["worker"], "wa");
    assert_eq!(done["frames"], 1394, "{done}");
    let (_, frames) = job_frames(&urls, ids[0]);
    assert_eq!(frames, (0..1394).collect::<Vec<u64>>());
    // The short clip: its records are what `run` writes (frames, tracks, events).
    until_job(&urls, ids[1], Duration::from_secs(60), |j| {
        j["state"] == "done"
    });
    let (records, _) = job_frames(&urls, ids[1]);
    let local = output_within(
        bin()
            .args(["run", "--no-attributes", "--json", "-", "--input"])
            .arg(&short),
        Duration::from_secs(60),
    );
    let local = json_lines(&String::from_utf8_lossy(&local.stdout));
    let kinds = |rs: &[Value]| {
        let mut k: Vec<(String, u64)> = rs
            .iter()
            .map(|r| {
                (
                    r["type"].as_str().unwrap().to_string(),
                    r["frame"].as_u64().or(r["track_id"].as_u64()).unwrap_or(0),
                )
            })
            .collect();
        k.sort();
        k
    };
    assert_eq!(kinds(&records), kinds(&local));
    assert!(
        records
            .iter()
            .all(|r| r["stream"] == ids[1] && r["worker"].is_string())
    );
    // The file that is not a video: failed, with the reason, once.
    let failed = until_job(&urls, ids[2], Duration::from_secs(30), |j| {
        j["state"] == "failed"
    });
    assert!(
        failed["error"].as_str().unwrap().contains("notes.mp4"),
        "{failed}"
    );
    assert_eq!(failed["attempts"], 1);
    // SIGTERM: the worker on a job gives it back at once and the other takes it.
    let long = fleet_ok(
        &urls,
        &["submit", "testsrc://ball?frames=1500&size=1280x720"],
    );
    let long = long.trim();
    let running = until_job(&urls, long, Duration::from_secs(30), |j| {
        j["state"] == "running" && j["frames"].as_u64().unwrap_or(0) > 0
    });
    let (stopping, other) = if running["worker"] == "wb" {
        (wb, wc)
    } else {
        (wc, wb)
    };
    let other_name = if running["worker"] == "wb" {
        "wc"
    } else {
        "wb"
    };
    let status = Command::new("kill")
        .args(["-TERM", &stopping.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let sigterm_at = Instant::now();
    until_job(&urls, long, Duration::from_secs(6), |j| {
        j["state"] == "running" && j["worker"] == other_name
    });
    eprintln!("job taken over {:?} after SIGTERM", sigterm_at.elapsed());
    until_job(&urls, long, Duration::from_secs(90), |j| {
        j["state"] == "done"
    });
    let (_, frames) = job_frames(&urls, long);
    assert_eq!(frames, (0..1500).collect::<Vec<u64>>());
    drop(stopping);
    drop(other);
    // Stored once, not only shown once: the stream holds as many records as the tail shows.
    let all = fleet_ok(&urls, &["tail"]);
    assert_eq!(
        all.lines().count() as u64,
        records_stored(&cluster.nodes[1])
    );
}

/// A camera that cannot be opened fails alone: `failed` with the reason in the status, while
/// the camera beside it on the same worker runs on without a break.
#[test]
fn a_camera_that_fails_is_marked_failed_and_its_neighbour_runs_on() {
    let Some(program) = nats_server() else {
        return;
    };
    let cluster = Cluster::start(&program, 1);
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("rtsp://127.0.0.1:{}/nothing", free_port());
    fleet_ok(
        &urls,
        &[
            "cameras",
            "add",
            "good",
            "testsrc://ball?live=true&frames=0&size=160x120&fps=10",
            "bad",
            &closed,
        ],
    );
    let _w = worker(&urls, "wa", dir.path());
    let started = Instant::now();
    let bad = loop {
        let lines = json_lines(&fleet_ok(&urls, &["status", "--json"]));
        if let Some(bad) = lines
            .into_iter()
            .find(|l| l["camera"] == "bad" && l["state"] == "failed")
        {
            break bad;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bad not failed in 30 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(bad["worker"], "wa");
    assert!(
        bad["error"].as_str().unwrap().contains("127.0.0.1"),
        "{bad}"
    );
    assert_eq!(placement(&urls).get("good").map(String::as_str), Some("wa"));
    std::thread::sleep(Duration::from_secs(2));
    let records = json_lines(&fleet_ok(&urls, &["tail", "--camera", "good"]));
    let frames: Vec<u64> = records
        .iter()
        .filter(|r| r["type"] == "frame")
        .map(|r| r["frame"].as_u64().unwrap())
        .collect();
    assert!(frames.len() > 20, "{}", frames.len());
    assert!(
        frames.windows(2).all(|p| p[1] == p[0] + 1),
        "good was interrupted: {frames:?}"
    );
}

/// Runs of one worker in a camera's records, in the stream's order: (worker, first and last
/// frame time, ms); asserts that no two workers' runs overlap by the clock time of their
/// frames: the camera never ran on two workers at once.
fn one_worker_at_a_time(camera: &str, records: &[Value]) -> Vec<(String, f64, f64)> {
    let mut runs: Vec<(String, f64, f64)> = Vec::new();
    for r in records {
        let worker = r["worker"]
            .as_str()
            .unwrap_or_else(|| panic!("no worker: {r}"));
        let Some(time) = r["time"].as_str() else {
            continue;
        };
        let t = chrono::DateTime::parse_from_rfc3339(time)
            .unwrap()
            .timestamp_millis() as f64;
        match runs.last_mut() {
            Some((w, first, last)) if w == worker => {
                *first = t.min(*first);
                *last = t.max(*last);
            }
            _ => runs.push((worker.to_string(), t, t)),
        }
    }
    // Records a worker sent before it was cut off may be stored late, after the next worker's:
    // by their frames' time, no two workers' runs overlap, whatever the order they were stored.
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            assert!(
                a.0 == b.0 || a.2 <= b.1 || b.2 <= a.1,
                "{camera}: {} ran from {} to {} and {} from {} to {}",
                a.0,
                a.1,
                a.2,
                b.0,
                b.1,
                b.2
            );
        }
    }
    runs
}

/// A worker cut off from NATS (the only server it was given, paused with SIGSTOP) stops its
/// cameras before their leases can expire, and the other worker takes them over: no camera's
/// frames come from two workers at once, by their clock time.
#[test]
fn a_worker_cut_off_from_nats_stops_before_another_takes_over() {
    let Some(program) = nats_server() else {
        return;
    };
    let cluster = Cluster::start(&program, 3);
    let urls = cluster.urls();
    let node = |i: usize| format!("nats://127.0.0.1:{}", cluster.nodes[i].port);
    let others = format!("{},{}", node(1), node(2));
    let dir = tempfile::tempdir().unwrap();
    let mut add = vec!["cameras".to_string(), "add".to_string()];
    for i in 0..4 {
        add.push(format!("cam{i}"));
        add.push("testsrc://ball?live=true&frames=0&size=160x120&fps=10".to_string());
    }
    fleet_ok(&urls, &add.iter().map(String::as_str).collect::<Vec<_>>());
    let _wa = worker(&node(0), "wa", dir.path());
    until(&urls, Duration::from_secs(30), "wa runs all", |p| {
        p.len() == 4 && p.values().all(|w| w == "wa")
    });
    let _wb = worker(&others, "wb", dir.path());
    until(&urls, Duration::from_secs(30), "balanced", |p| {
        p.len() == 4 && counts(p, &["wa", "wb"]) == [2, 2]
    });
    // wa's only server stops answering (its connection stays open: no error, only silence).
    cluster.nodes[0].signal("STOP");
    // The lease (10 s), then the cluster electing new leaders for what node 0 led; on a loaded
    // machine the elections take longer (what is checked is that wa stopped first, below).
    let took = until(
        &others,
        Duration::from_secs(90),
        "wb takes wa's cameras",
        |p| p.len() == 4 && p.values().all(|w| w == "wb"),
    );
    eprintln!("wb ran all four {took:?} after wa's server paused");
    std::thread::sleep(Duration::from_secs(3));
    cluster.nodes[0].signal("CONT");
    // Back: wa comes back and takes its share again (wb may hand a camera back before it stored
    // a record of it); either way, one worker at a time.
    std::thread::sleep(Duration::from_secs(8));
    let mut workers = std::collections::BTreeSet::new();
    for i in 0..4 {
        let camera = format!("cam{i}");
        let records = json_lines(&fleet_ok(&others, &["tail", "--camera", &camera]));
        for (worker, _, _) in one_worker_at_a_time(&camera, &records) {
            workers.insert(worker);
        }
    }
    assert_eq!(
        workers.into_iter().collect::<Vec<_>>(),
        ["wa", "wb"],
        "wb: {}",
        std::fs::read_to_string(dir.path().join("wb.log")).unwrap_or_default()
    );
}
