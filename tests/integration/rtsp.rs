//! `faceflow run` against an RTSP server started inside the test (gst-rtsp-server on 127.0.0.1).

use gstreamer as gst;
use gstreamer::glib;
use gstreamer_rtsp_server as rtsp_server;
use gstreamer_rtsp_server::prelude::*;

use crate::util::*;

/// A live H.264 test stream at rtsp://127.0.0.1:PORT/test, served until dropped.
struct TestServer {
    port: i32,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start() -> Self {
        gst::init().unwrap();
        let server = rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service("0");
        let factory = rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(
            "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=20/1 \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )",
        );
        factory.set_shared(true);
        server.mount_points().unwrap().add_factory("/test", factory);
        let ctx = glib::MainContext::new();
        let _source = server.attach(Some(&ctx)).unwrap();
        let port = server.bound_port();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let ml = main_loop.clone();
        let thread = std::thread::spawn(move || {
            let _keep = server;
            ctx.with_thread_default(|| ml.run()).unwrap();
        });
        Self {
            port,
            main_loop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/test", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
}

#[test]
fn rtsp_stream_over_udp() {
    check_live_run(&[]);
}

#[test]
fn rtsp_stream_over_tcp() {
    check_live_run(&["--rtsp-tcp", "--rtsp-latency-ms", "100"]);
}
