//! MQTT against a real broker (mosquitto, started by the test on 127.0.0.1): every record the
//! JSON file has with a face, and every track record, reaches a subscriber, also when the broker
//! is stopped mid-run and started again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Where `tool` is: on PATH, or in the sbin folders a PATH without them leaves out (Debian puts
/// the broker in /usr/sbin).
fn tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// The mosquitto programs a test runs.
pub(crate) struct Mosquitto {
    pub(crate) broker: PathBuf,
    subscribe: PathBuf,
    publish: PathBuf,
}

/// The broker and its clients, or `None` (skipped; under CI a failure).
pub(crate) fn mosquitto() -> Option<Mosquitto> {
    if let (Some(broker), Some(subscribe), Some(publish)) = (
        tool("mosquitto"),
        tool("mosquitto_sub"),
        tool("mosquitto_pub"),
    ) {
        return Some(Mosquitto {
            broker,
            subscribe,
            publish,
        });
    }
    assert!(
        std::env::var("CI").is_err(),
        "mosquitto and its clients are needed (scripts/deps.sh installs them)"
    );
    eprintln!("SKIPPED: mosquitto not installed (scripts/deps.sh)");
    None
}

/// What the subscribers' probe messages carry; not JSON, so no record is ever taken for one.
const PROBE: &str = "faceflow-test-probe";

/// A subscriber, stopped when dropped: also when a test fails (it would otherwise run on, and
/// hold what its test's parent holds, such as a lock).
pub(crate) struct Subscriber(Child);

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A mosquitto_sub on `port` with `args` (its topic filter must match `faceflow/probe`), writing
/// what it receives to `received`, returned once it is subscribed: a probe published again and
/// again has come back (a fixed sleep races a slow start).
pub(crate) fn subscriber(
    tools: &Mosquitto,
    port: u16,
    args: &[&str],
    received: &Path,
) -> Subscriber {
    let child = Command::new(&tools.subscribe)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(std::fs::File::create(received).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Subscriber(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = Command::new(&tools.publish)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", "faceflow/probe", "-m", PROBE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::fs::read_to_string(received)
            .unwrap_or_default()
            .lines()
            .any(|l| l == PROBE)
        {
            return child;
        }
        if Instant::now() > deadline {
            panic!("mosquitto_sub on port {port} did not get a probe within 20 s: not subscribed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The records a subscriber wrote (probes left out), each as often as it came.
pub(crate) fn received_records(received: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(received)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l != PROBE)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// A broker with persistent sessions in `dir`, on `port`.
pub(crate) struct Broker {
    program: PathBuf,
    conf: PathBuf,
    /// The broker's log, kept across restarts.
    log: PathBuf,
    pub(crate) port: u16,
    child: Option<Child>,
}

impl Broker {
    pub(crate) fn start(program: PathBuf, dir: &Path) -> Self {
        Self::start_with(program, dir, "")
    }

    /// A broker whose listener on `port` gets `listener_conf` (TLS settings) too.
    fn start_with(program: PathBuf, dir: &Path, listener_conf: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // mosquitto started as root runs as user mosquitto: its folder must be writable by it,
        // and the folders above it open to it.
        let data = dir.join("broker");
        std::fs::create_dir_all(&data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{listener_conf}allow_anonymous true\npersistence true\npersistence_location {0}/\nlog_dest file {0}/mosquitto.log\n",
                data.display()
            ),
        )
        .unwrap();
        let mut broker = Self {
            program,
            conf,
            log: data.join("mosquitto.log"),
            port,
            child: None,
        };
        broker.restart();
        broker
    }

    fn restart(&mut self) {
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until faceflow (a client id `faceflow-…`, not the test's subscriber) has connected
    /// `n` times in all, restarts included.
    fn wait_for_faceflow_connections(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let connections = log
                .lines()
                .filter(|l| l.contains("New client connected") && l.contains(" as faceflow-"))
                .filter(|l| !l.contains("faceflow-test-"))
                .count();
            if connections >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "faceflow connected {connections} times, not {n}, within 20 s: {log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker hangs for `frozen` (what is sent to it meanwhile is never acknowledged), then
    /// dies without saving anything: started again, it has the sessions it saved last.
    fn freeze_then_kill(&mut self, frozen: Duration) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-STOP", &pid]).status();
            std::thread::sleep(frozen);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What identifies a record: its type, stream and frame or track id.
fn key(record: &serde_json::Value) -> String {
    format!(
        "{} {} {} {}",
        record["type"], record["stream"], record["frame"], record["track_id"]
    )
}

/// The records of a run's JSON that go to MQTT: frames with a face, and people's records
/// (`track_start`, `track_update`, `track`).
fn published_records(json: &Path) -> HashSet<String> {
    read_all_jsonl(json)
        .iter()
        .filter(|r| r["type"] != "frame" || !r["faces"].as_array().unwrap().is_empty())
        .map(key)
        .collect()
}

/// The records a subscriber wrote to `received`, once they hold `expected` or `limit` is over.
fn wait_for_records(
    received: &Path,
    expected: &HashSet<String>,
    limit: Duration,
) -> HashSet<String> {
    let deadline = Instant::now() + limit;
    loop {
        let got: HashSet<String> = received_records(received).iter().map(key).collect();
        if expected.is_subset(&got) || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A subscriber to every faceflow topic with a persistent session (QoS 1): it reconnects by
/// itself after a broker restart and gets what was queued for it meanwhile.
fn persistent_subscriber(tools: &Mosquitto, port: u16, received: &Path) -> Subscriber {
    subscriber(
        tools,
        port,
        &[
            "-c",
            "-i",
            "faceflow-test-sub",
            "-q",
            "1",
            "-t",
            "faceflow/#",
        ],
        received,
    )
}

#[test]
fn a_broker_stopped_and_restarted_mid_run_loses_no_record() {
    let Some(tools) = mosquitto() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(tools.broker.clone(), dir.path());
    let received = dir.path().join("received.txt");
    // A subscriber with a persistent session: it reconnects by itself after the restart.
    let subscriber = persistent_subscriber(&tools, broker.port, &received);
    let json = dir.path().join("out.jsonl");
    let url = format!("mqtt://127.0.0.1:{}/faceflow/{{stream}}", broker.port);
    // The demo clip read as a camera: 4 s at its own frame rate.
    let run = bin()
        .args(["run", "--live", "true", "--input"])
        .arg(project_root().join("samples/astronaut.mp4"))
        .args(["--mqtt", &url, "--json"])
        .arg(&json)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    broker.stop();
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart();
    let out = run.wait_with_output_limited();
    let stderr = String::from_utf8_lossy(&out.1);
    assert!(out.0.success(), "{stderr}");
    let expected = published_records(&json);
    assert!(expected.len() > 50, "{}", expected.len());
    // The subscriber gets what the broker kept for it once it is back.
    let got = wait_for_records(&received, &expected, Duration::from_secs(20));
    drop(subscriber);
    let missing: Vec<&String> = expected.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records missing, e.g. {:?}; {stderr}",
        missing.len(),
        expected.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    // The broker went away: said once, and the summary counts what was published.
    assert!(
        stderr.contains("reconnecting, records are kept"),
        "{stderr}"
    );
    assert!(stderr.contains(" records published"), "{stderr}");
    assert!(!stderr.contains("dropped (buffer full)"), "{stderr}");
}

trait WaitLimited {
    fn wait_with_output_limited(self) -> (std::process::ExitStatus, Vec<u8>);
}

impl WaitLimited for Child {
    /// Waits at most a minute for the run (kills it after).
    fn wait_with_output_limited(mut self) -> (std::process::ExitStatus, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.try_wait().unwrap() {
                let mut stderr = Vec::new();
                use std::io::Read;
                if let Some(mut e) = self.stderr.take() {
                    let _ = e.read_to_end(&mut stderr);
                }
                return (status, stderr);
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                panic!("faceflow did not finish within a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority `NAME.pem` (key `NAME.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

#[test]
fn mqtts_with_a_ca_file_delivers_and_a_wrong_ca_is_refused() {
    let Some(tools) = mosquitto() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("broker");
    std::fs::create_dir_all(&tls).unwrap();
    // A CA, a broker certificate for 127.0.0.1 signed by it, and a second CA that signed nothing.
    make_ca(&tls, "ca");
    make_ca(&tls, "other-ca");
    openssl(
        &tls,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(tls.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &tls,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    // mosquitto started as root reads its files as user mosquitto.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(tls.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // TLS on the broker's port for faceflow; the subscriber on a plain second listener.
    let plain_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nlistener {plain_port} 127.0.0.1\n",
        tls.display()
    );
    let broker = Broker::start_with(tools.broker.clone(), dir.path(), &conf);
    let received = dir.path().join("received.txt");
    let subscriber = subscriber(
        &tools,
        plain_port,
        &["-q", "1", "-t", "faceflow/#"],
        &received,
    );
    let url = format!("mqtts://127.0.0.1:{}/faceflow/{{stream}}", broker.port);
    let run = |ca: &str, json: &Path| {
        bin()
            .args(["run", "--input"])
            .arg(project_root().join("samples/astronaut.mp4"))
            .args(["--max-frames", "20", "--mqtt", &url, "--mqtt-ca"])
            .arg(tls.join(ca))
            .arg("--json")
            .arg(json)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
            .wait_with_output_limited()
    };
    let json = dir.path().join("out.jsonl");
    let (status, stderr) = run("ca.pem", &json);
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(status.success(), "{stderr}");
    let expected = published_records(&json);
    assert!(expected.len() >= 20, "{}", expected.len());
    let got = wait_for_records(&received, &expected, Duration::from_secs(10));
    assert!(
        expected.is_subset(&got),
        "{} of {} arrived; {stderr}",
        got.len(),
        expected.len()
    );
    assert!(
        stderr.contains(&format!("{} records published", expected.len())),
        "{stderr}"
    );

    // A broker whose certificate the CA given does not vouch for: nothing is published, the
    // log says why, and the run fails saying every record was lost (the JSON is complete).
    let other = dir.path().join("other.jsonl");
    let (status, stderr) = run("other-ca.pem", &other);
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    drop(subscriber);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    let lost = published_records(&other).len();
    assert_eq!(lost, expected.len());
    assert!(
        stderr.trim_end().ends_with(&format!(
            "{lost} records not acknowledged by the broker (lost); 0 published"
        )),
        "{stderr}"
    );
}

/// A live test pattern of `frames` frames, every frame published (no faces in it), to a broker;
/// the run's child process.
fn run_pattern_to(broker: &Broker, frames: u32, json: &Path) -> Child {
    let url = format!("mqtt://127.0.0.1:{}/faceflow/{{stream}}", broker.port);
    bin()
        .args(["run", "--no-attributes", "--mqtt-all-frames", "--input"])
        .arg(format!(
            "testsrc://ball?frames={frames}&live=true&size=160x120"
        ))
        .args(["--mqtt", &url, "--json"])
        .arg(json)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_broker_restarted_twice_gets_every_record_and_each_is_counted_once() {
    let Some(tools) = mosquitto() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(tools.broker.clone(), dir.path());
    let received = dir.path().join("received.txt");
    let subscriber = persistent_subscriber(&tools, broker.port, &received);
    let json = dir.path().join("out.jsonl");
    // 10 s of frames; each outage starts once faceflow is connected (again) and publishing. The
    // first stops the broker cleanly; in the second it hangs with records in flight and dies:
    // those were never acknowledged and go out again after the restart.
    let mut run = run_pattern_to(&broker, 250, &json);
    for outage in 1..=2 {
        broker.wait_for_faceflow_connections(outage);
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended before outage {outage}: give it more frames"
        );
        if outage == 1 {
            broker.stop();
        } else {
            broker.freeze_then_kill(Duration::from_millis(600));
        }
        std::thread::sleep(Duration::from_millis(700));
        broker.restart();
    }
    broker.wait_for_faceflow_connections(3);
    let (status, stderr) = run.wait_with_output_limited();
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(status.success(), "{stderr}");
    // Every frame is published (--mqtt-all-frames).
    let expected: HashSet<String> = read_all_jsonl(&json).iter().map(key).collect();
    assert_eq!(expected.len(), 250, "{stderr}");
    // Every record reached the subscriber at least once (QoS 1: one sent again may come twice).
    let got = wait_for_records(&received, &expected, Duration::from_secs(20));
    drop(subscriber);
    let missing: Vec<&String> = expected.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records missing, e.g. {:?}; {stderr}",
        missing.len(),
        expected.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    // Both outages were seen, and every record was acknowledged exactly once: the count is the
    // records', not the publishes'.
    assert_eq!(stderr.matches("connected again").count(), 2, "{stderr}");
    assert!(
        stderr.contains(&format!(": {} records published", expected.len())),
        "{stderr}"
    );
    assert!(
        stderr.contains(" sent again after reconnecting"),
        "{stderr}"
    );
    assert!(!stderr.contains("dropped (buffer full)"), "{stderr}");
    assert!(!stderr.contains("not acknowledged"), "{stderr}");
}

#[test]
fn a_broker_that_never_comes_back_fails_the_run_with_the_records_lost() {
    let Some(tools) = mosquitto() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(tools.broker.clone(), dir.path());
    let json = dir.path().join("out.jsonl");
    // 4 s of frames; the broker goes for good once faceflow has published for a while.
    let run = run_pattern_to(&broker, 100, &json);
    broker.wait_for_faceflow_connections(1);
    std::thread::sleep(Duration::from_millis(800));
    broker.stop();
    let (status, stderr) = run.wait_with_output_limited();
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    // The JSON has every frame all the same.
    let records = read_jsonl(&json);
    assert_eq!(records.len(), 100, "{stderr}");
    assert_contiguous_frames(&records);
    // One error line, last, with what was lost; lost and published add up to the records.
    let last = stderr.lines().last().unwrap_or_default();
    let prefix = format!(
        "error: mqtt mqtt://127.0.0.1:{}/faceflow/{{stream}}: ",
        broker.port
    );
    let counts = last
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{stderr}"));
    let (lost, published) = counts
        .split_once(" records not acknowledged by the broker (lost); ")
        .unwrap_or_else(|| panic!("{stderr}"));
    let lost: usize = lost.parse().unwrap();
    let published: usize = published
        .strip_suffix(" published")
        .unwrap()
        .parse()
        .unwrap();
    assert!(lost > 0 && published > 0, "{stderr}");
    assert_eq!(lost + published, 100, "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    // The run's summary is still said, before the error.
    assert!(
        stderr.contains("faceflow: stream 0 (") && stderr.contains("records published"),
        "{stderr}"
    );
}

fn assert_contiguous_frames(records: &[serde_json::Value]) {
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["frame"], i as u64, "{r}");
    }
}
