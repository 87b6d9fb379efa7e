//! `faceflow run` against an RTSP server started inside the test (gst-rtsp-server on 127.0.0.1).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer_rtsp_server as rtsp_server;
use gstreamer_rtsp_server::prelude::*;

use crate::util::*;

/// A live H.264 test stream at rtsp://127.0.0.1:PORT/test, served until stopped or dropped.
pub(crate) struct TestServer {
    port: u16,
    server: rtsp_server::RTSPServer,
    /// A valve before the encoder: closed, the camera stalls (no data, no end of stream).
    gate: Arc<Mutex<Option<gst::Element>>>,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub(crate) fn start() -> Self {
        Self::start_on(0)
    }

    /// Serves on `port` (0: any free port); a restarted camera comes back on its old port.
    fn start_on(port: u16) -> Self {
        Self::serve(port, None)
    }

    /// A camera that asks for a user name and password (basic authentication).
    fn start_with_login(user: &str, password: &str) -> Self {
        Self::serve(0, Some((user, password)))
    }

    fn serve(port: u16, login: Option<(&str, &str)>) -> Self {
        gst::init().unwrap();
        let server = rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());
        let factory = rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(
            "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=20/1 \
             ! valve name=gate drop=false ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )",
        );
        factory.set_shared(true);
        let gate = Arc::new(Mutex::new(None));
        let gate_slot = gate.clone();
        factory.connect_media_configure(move |_, media| {
            let bin = media.element().downcast::<gst::Bin>().ok();
            if let (Some(valve), Ok(mut slot)) =
                (bin.and_then(|b| b.by_name("gate")), gate_slot.lock())
            {
                *slot = Some(valve);
            }
        });
        if let Some((user, password)) = login {
            use rtsp_server::prelude::*;
            let auth = rtsp_server::RTSPAuth::new();
            let token = rtsp_server::RTSPToken::builder()
                .field(rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
                .build();
            auth.add_basic(&rtsp_server::RTSPAuth::make_basic(user, password), &token);
            server.set_auth(Some(&auth));
            let role = gst::Structure::builder("viewer")
                .field(rtsp_server::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                .field(rtsp_server::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                .build();
            factory.add_role_from_structure(&role);
        }
        server.mount_points().unwrap().add_factory("/test", factory);
        let ctx = glib::MainContext::new();
        let _source = server.attach(Some(&ctx)).unwrap();
        let port = u16::try_from(server.bound_port()).unwrap();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let ml = main_loop.clone();
        let keep = server.clone();
        let thread = std::thread::spawn(move || {
            let _keep = keep;
            ctx.with_thread_default(|| ml.run()).unwrap();
        });
        Self {
            port,
            server,
            gate,
            main_loop,
            thread: Some(thread),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/test", self.port)
    }

    /// Stops (or restarts) the flow of frames while connections stay up.
    fn set_stalled(&self, stalled: bool) {
        let gate = self.gate.lock().unwrap();
        gate.as_ref()
            .expect("the stream is not playing")
            .set_property("drop", stalled);
    }

    /// The camera goes away: clients are disconnected, streaming stops, the port closes.
    fn stop(mut self) -> u16 {
        self.shut_down();
        self.port
    }

    fn shut_down(&mut self) {
        self.server
            .client_filter(Some(&mut |_, _| rtsp_server::RTSPFilterResult::Remove));
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Starts `faceflow run` on `url` with JSON on standard output, collecting records as they come.
struct LiveRun {
    child: std::process::Child,
    records: std::sync::mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

impl LiveRun {
    fn start(url: &str, extra: &[&str]) -> Self {
        let mut child = bin()
            .args(["run", "--input", url, "--no-attributes", "--json", "-"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, records) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let record: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(record).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            records,
            seen: Vec::new(),
        }
    }

    /// Waits until `n` records have come (panics after `limit`).
    fn wait_for_records(&mut self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.records.recv_timeout(left) {
                Ok(r) => self.seen.push(r),
                Err(e) => panic!("only {} of {n} records: {e:?}", self.seen.len()),
            }
        }
    }

    /// Waits for the exit (kills and panics after `limit`); returns the status, all records and
    /// standard error.
    fn finish(
        mut self,
        limit: Duration,
    ) -> (std::process::ExitStatus, Vec<serde_json::Value>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("faceflow did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.seen.extend(self.records.iter());
        let mut stderr = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, self.seen, stderr)
    }
}

fn check_live_run(extra: &[&str]) {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("rtsp.jsonl");
    let out = run_ok(
        bin()
            .args([
                "run",
                "--input",
                &server.url(),
                "--max-frames",
                "30",
                "--json",
            ])
            .arg(&json)
            .args(extra),
    );
    let records = read_jsonl(&json);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Live: frames may be dropped when behind, but every decoded frame is reported or counted.
    assert_live_accounting(&records, &stderr, 30);
    assert!(
        records
            .iter()
            .all(|r| r["width"] == 320 && r["height"] == 240)
    );
    assert!(records.iter().all(|r| {
        r["source"]
            .as_str()
            .unwrap()
            .starts_with("rtsp://127.0.0.1:")
    }));
    let pts: Vec<f64> = records
        .iter()
        .map(|r| r["pts_ms"].as_f64().unwrap())
        .collect();
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "{pts:?}");
    // A camera's timeline starts at its first frame.
    if records[0]["frame"] == 0 {
        assert_eq!(pts[0], 0.0, "{pts:?}");
    }
}

#[test]
fn rtsp_stream_over_udp() {
    check_live_run(&[]);
}

#[test]
fn rtsp_stream_over_tcp() {
    check_live_run(&["--rtsp-tcp", "--rtsp-latency-ms", "100"]);
}

#[test]
fn camera_that_goes_away_and_comes_back_is_reconnected() {
    let server = TestServer::start();
    let url = server.url();
    let mut run = LiveRun::start(
        &url,
        &[
            "--max-frames",
            "60",
            "--stall-timeout-ms",
            "1500",
            "--reconnect-attempts",
            "20",
        ],
    );
    run.wait_for_records(15, Duration::from_secs(60));
    let port = server.stop();
    let stopped_at = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let _restarted = TestServer::start_on(port);
    let (status, records, stderr) = run.finish(Duration::from_secs(90));
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Every decoded frame is reported or counted as dropped, in order, across the reconnection.
    assert_live_accounting(&records, &stderr, 60);
    assert!(stderr.contains("reconnecting in"), "{stderr}");
    // The gap is on the first record after it, and timestamps keep increasing through it. (A
    // starved test machine may add a short stall of its own: at least one reconnection.)
    let gaps = reconnection_gaps(&records, &stderr);
    let longest = gaps.iter().copied().fold(0.0, f64::max);
    assert!(longest >= 3000.0, "{gaps:?}");
    assert!(
        longest < stopped_at.elapsed().as_secs_f64() * 1e3,
        "{gaps:?}"
    );
    let pts: Vec<f64> = records
        .iter()
        .map(|r| r["pts_ms"].as_f64().unwrap())
        .collect();
    assert!(pts.windows(2).all(|w| w[0] < w[1]), "{pts:?}");
    assert!(
        pts.windows(2).any(|w| w[1] - w[0] >= 2500.0),
        "no jump over the gap: {pts:?}"
    );
}

#[test]
fn camera_that_stays_away_ends_with_one_error_after_the_configured_attempts() {
    let server = TestServer::start();
    let url = server.url();
    let mut run = LiveRun::start(
        &url,
        &[
            "--rtsp-tcp",
            "--stall-timeout-ms",
            "1000",
            "--reconnect-attempts",
            "2",
        ],
    );
    run.wait_for_records(10, Duration::from_secs(60));
    server.stop();
    let stopped_at = Instant::now();
    let (status, records, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(20),
        "took {:?} to give up",
        stopped_at.elapsed()
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("error: {url}: ")), "{stderr}");
    assert!(
        last.ends_with("gave up after 2 reconnection attempts"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // What came before the camera went away is all there.
    let frames: Vec<u64> = records
        .iter()
        .map(|r| r["frame"].as_u64().unwrap())
        .collect();
    assert!(frames.len() >= 10 && frames[0] < 30, "{frames:?}");
    // The summary before the error accounts for every frame decoded before the camera went.
    assert!(stderr.contains("the source failed"), "{stderr}");
    assert_live_accounting(&records, &stderr, decoded_from_summary(&stderr));
}

#[test]
fn camera_that_stalls_without_ending_is_detected_and_reconnected() {
    let server = TestServer::start();
    let mut run = LiveRun::start(
        &server.url(),
        &["--max-frames", "50", "--stall-timeout-ms", "1000"],
    );
    run.wait_for_records(15, Duration::from_secs(60));
    server.set_stalled(true);
    std::thread::sleep(Duration::from_secs(3));
    server.set_stalled(false);
    let (status, records, stderr) = run.finish(Duration::from_secs(90));
    assert!(status.success(), "{stderr}");
    assert_live_accounting(&records, &stderr, 50);
    assert!(stderr.contains("no frame for 1."), "{stderr}");
    let gaps = reconnection_gaps(&records, &stderr);
    assert!(gaps.iter().any(|&g| g >= 1000.0), "{gaps:?}");
}

#[test]
fn ctrl_c_while_the_camera_is_away_exits_promptly_with_complete_json() {
    let server = TestServer::start();
    let mut run = LiveRun::start(&server.url(), &["--stall-timeout-ms", "1000"]);
    run.wait_for_records(10, Duration::from_secs(60));
    server.stop();
    // Now reconnecting with backoff, forever by default.
    std::thread::sleep(Duration::from_secs(2));
    let status = std::process::Command::new("kill")
        .args(["-INT", &run.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let interrupted_at = Instant::now();
    let (status, records, stderr) = run.finish(Duration::from_secs(30));
    assert!(
        interrupted_at.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        interrupted_at.elapsed()
    );
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let (frames, dropped) =
        assert_live_accounting(&records, &stderr, decoded_from_summary(&stderr));
    // Numbered from 0; a busy machine may have dropped the first frames of a live camera.
    assert!(
        frames[0] as usize <= dropped,
        "{frames:?}, {dropped} dropped"
    );
}

/// The `gap_before_ms` of every record after a reconnection; at least one, and as many as the
/// summary's reconnections.
fn reconnection_gaps(records: &[serde_json::Value], stderr: &str) -> Vec<f64> {
    let gaps: Vec<f64> = records
        .iter()
        .filter_map(|r| r["gap_before_ms"].as_f64())
        .collect();
    assert!(!gaps.is_empty(), "{stderr}");
    assert!(
        stderr.contains(&format!("{} reconnection", gaps.len())),
        "{stderr}"
    );
    gaps
}

/// A camera URL with a password, served and refused: the password appears nowhere in standard
/// output, standard error (every log level) or the JSON file, and the error names user and host.
#[test]
fn passwords_in_camera_urls_never_appear_in_any_output() {
    let server = TestServer::start_with_login("admin", "s3cretpw");
    let with = |password: &str| {
        server
            .url()
            .replacen("rtsp://", &format!("rtsp://admin:{password}@"), 1)
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    // Served: the right password, logs at every level.
    let out = bin()
        .args(["run", "--input", &with("s3cretpw"), "--no-attributes"])
        .args(["--max-frames", "10", "--rtsp-tcp", "-vvv", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let records = read_jsonl(&json);
    assert!(!records.is_empty(), "{stderr}");
    let text = std::fs::read_to_string(&json).unwrap();
    for (what, output) in [
        ("stderr", stderr.as_ref()),
        ("stdout", &String::from_utf8_lossy(&out.stdout)),
        ("json", &text),
    ] {
        assert!(
            !output.contains("s3cretpw"),
            "{what} leaks the password: {output}"
        );
    }
    assert!(
        records[0]["source"]
            .as_str()
            .unwrap()
            .starts_with("rtsp://admin:***@127.0.0.1:"),
        "{}",
        records[0]
    );
    assert!(stderr.contains("rtsp://admin:***@127.0.0.1:"), "{stderr}");
    // Refused: a wrong password; JSON on standard output this time.
    let out = bin()
        .args(["run", "--input", &with("wr0ngpw"), "--no-attributes"])
        .args([
            "--reconnect-attempts",
            "0",
            "--rtsp-tcp",
            "-vvv",
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("wr0ngpw"),
        "stderr leaks the password: {stderr}"
    );
    assert!(
        !stdout.contains("wr0ngpw"),
        "stdout leaks the password: {stdout}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: rtsp://admin:***@127.0.0.1:"),
        "{stderr}"
    );
}

/// Pieces that only a test's passwords hold: one of them in any output means a leak (of the
/// whole password or a part of it).
const MARKERS: [&str; 7] = ["K7q", "W3z", "J5x", "V9b", "T4n", "M2k", "P8d"];

fn assert_no_marker(what: &str, text: &str) {
    for marker in MARKERS {
        if let Some(at) = text.find(marker) {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!(
                "{what} leaks the password ({marker}): {}",
                &text[line_start..line_end]
            );
        }
    }
}

/// A camera that does not answer, with passwords that hold what ended the masking early before
/// (`#`, `?`, brackets, quotes, `<>`, a backtick, spaces, several `/`, `@`, non-ASCII, even
/// `://`): the run fails, every line at every log level masks the password, the last says which
/// camera.
#[test]
fn hostile_passwords_of_a_camera_that_fails_never_show() {
    let port = crate::metrics::free_port();
    let dir = tempfile::tempdir().unwrap();
    for password in [
        "K7q#W3z?J5x)V9b]",
        "K7q\"W3z'J5x<V9b>T4n`M2k P8d",
        "K7q/W3z/J5x@V9b/T4n",
        "K7q é密 W3z://J5x@V9b",
    ] {
        let json = dir.path().join("out.jsonl");
        let out = bin()
            .args(["run", "--no-attributes", "-vvv", "--input"])
            .arg(format!("rtsp://admin:{password}@127.0.0.1:{port}/x"))
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{password}: {stderr}");
        assert_no_marker("stderr", &stderr);
        assert_no_marker("stdout", &String::from_utf8_lossy(&out.stdout));
        assert_no_marker("json", &std::fs::read_to_string(&json).unwrap_or_default());
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("error: rtsp://admin:***@127.0.0.1:{port}/x")),
            "{password}: {stderr}"
        );
    }
}

/// A served camera whose URL has a hostile password, and a broker URL with one: neither shows in
/// the JSON records' `source`, the MQTT payloads, the metrics, the `stats:` lines, the summary,
/// the log at every level, or the window's title.
#[test]
fn a_hostile_password_reaches_no_output() {
    let Some(tools) = crate::mqtt::mosquitto() else {
        return;
    };
    let server = TestServer::start();
    // What GStreamer's RTSP source parses (it cannot take a '/', '?' or '@' in a password).
    let camera_password = "K7q#W3z)J5x]\"V9b'<T4n>`M2k é密";
    let camera = server
        .url()
        .replacen("rtsp://", &format!("rtsp://admin:{camera_password}@"), 1);
    let dir = tempfile::tempdir().unwrap();
    let mut broker = crate::mqtt::Broker::start(tools.broker.clone(), dir.path());
    let received = dir.path().join("received.txt");
    let subscriber = crate::mqtt::subscriber(
        &tools,
        broker.port,
        &["-q", "1", "-t", "faceflow/#"],
        &received,
    );
    // mosquitto without a password file takes any login.
    let broker_url = format!(
        "mqtt://bob:P8d/#?@ x@127.0.0.1:{}/faceflow/{{stream}}",
        broker.port
    );
    let metrics_port = crate::metrics::free_port();
    let xvfb = crate::window::Xvfb::start();
    let json = dir.path().join("out.jsonl");
    // Standard error to a file: the log at every level is more than a pipe holds.
    let stderr_file = dir.path().join("stderr.txt");
    let mut command = bin();
    command
        .args([
            "run",
            "--no-attributes",
            "-vvv",
            "--rtsp-tcp",
            "--input",
            &camera,
        ])
        .args(["--max-frames", "60", "--stats-every", "0.5", "--json"])
        .arg(&json)
        .args(["--mqtt", &broker_url, "--mqtt-all-frames"])
        .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
        .stderr(std::fs::File::create(&stderr_file).unwrap());
    if let Some(x) = &xvfb {
        command
            .env("DISPLAY", &x.display)
            .env_remove("WAYLAND_DISPLAY")
            .args(["--overlay", "window"]);
    }
    let mut run = command.spawn().unwrap();
    // While it runs: the metrics, and the windows' titles.
    let (mut metrics, mut windows) = (String::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.try_wait().unwrap().is_none() && Instant::now() < deadline {
        if let Some(text) = crate::metrics::get(metrics_port, "/metrics")
            && text.contains("faceflow_frames_decoded_total")
        {
            metrics = text;
        }
        if let Some(x) = &xvfb
            && !windows.contains("\"faceflow: 0")
            && let Ok(out) = std::process::Command::new("xwininfo")
                .args(["-root", "-tree", "-display", &x.display])
                .output()
        {
            windows = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = run.wait().unwrap();
    let stderr = std::fs::read_to_string(&stderr_file).unwrap();
    // The log is long: failures show its end (the summary, the errors).
    let end = &stderr[stderr.floor_char_boundary(stderr.len().saturating_sub(4000))..];
    assert!(status.success(), "{end}");
    // A live camera may drop a frame behind: each frame written is a record.
    let records = read_jsonl(&json);
    assert!(records.len() >= 30, "{end}");
    // Every record goes to MQTT: the frames, and track records if the detector saw a face.
    let all = read_all_jsonl(&json).len();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = crate::mqtt::received_records(&received);
    while got.len() < all && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        got = crate::mqtt::received_records(&received);
    }
    drop(subscriber);
    broker.stop();
    assert_eq!(got.len(), all, "{end}");
    let payloads = std::fs::read_to_string(&received).unwrap();
    assert!(metrics.contains("faceflow_frames_decoded_total"), "{end}");
    for (what, text) in [
        ("stderr", stderr.as_str()),
        ("json", &std::fs::read_to_string(&json).unwrap()),
        ("mqtt", &payloads),
        ("metrics", &metrics),
        ("windows", &windows),
    ] {
        assert_no_marker(what, text);
    }
    let shown = format!("rtsp://admin:***@127.0.0.1:{}/test", server.port);
    assert_eq!(records[0]["source"], shown.as_str());
    assert!(
        got.iter().all(|r| r["source"] == shown.as_str()),
        "{payloads}"
    );
    assert!(stderr.contains(&format!("stream 0 ({shown})")), "{end}");
    assert!(stderr.contains("stats: "), "{end}");
    assert!(
        stderr.contains(&format!(
            "mqtt mqtt://bob:***@127.0.0.1:{}/faceflow/{{stream}}: {all} records published",
            broker.port
        )),
        "{end}"
    );
    if xvfb.is_some() {
        // ximagesink adds its own name: `"faceflow: 0 : faceflow"`.
        assert!(windows.contains("\"faceflow: 0"), "{windows}");
    }
}
