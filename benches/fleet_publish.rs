//! What publishing a record to JetStream costs a worker: records of a frame with two faces,
//! through the fleet's records sink (serialised, published with a message id, acknowledged by
//! the stream), against a real nats-server (installed by scripts/deps.sh) started here on
//! 127.0.0.1 with a store of its own. Skipped, said, without nats-server.
//!
//!     cargo bench --bench fleet_publish
//!
//! Per camera: records per second are frames per second (plus a few track events), so a camera at
//! 25 fps costs 25 × the time per record below.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faceflow::fleet::publish::RecordsSink;
use faceflow::fleet::store::{Fleet, NatsOptions, Retention};
use faceflow::record::FrameRecord;
use faceflow::sinks::Sink;

/// The server, and its store folder (removed when dropped).
struct Server(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server() -> Option<(Server, u16)> {
    let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".nats/bin/nats-server");
    if !program.is_file() {
        eprintln!("fleet_publish: SKIPPED: {} not found", program.display());
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = tempfile::tempdir().ok()?;
    let child = Command::new(program)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((Server(child, dir), port))
}

fn frame_record(frame: u64) -> FrameRecord {
    let face = serde_json::json!({
        "bbox": [357.45, 58.67, 436.44, 164.26], "score": 0.9993,
        "landmarks": [[380.1, 98.2], [414.7, 97.5], [398.3, 118.9], [384.0, 139.4], [411.2, 138.8]],
        "track_id": 3, "confirmed": true,
        "age": {"group": "24-39", "index": 2, "probs": [0.0, 0.004, 0.417, 0.387, 0.192], "years": 42.0},
        "gender": {"label": "female", "prob": 0.73},
        "race": {"label": "white", "prob": 0.81}
    });
    serde_json::from_value(serde_json::json!({
        "type": "frame", "stream": "lobby", "source": "rtsp://cam/lobby", "frame": frame,
        "pts_ms": frame as f64 * 40.0, "time": "2026-12-07T09:00:00.000Z",
        "width": 1920, "height": 1080, "faces": [face.clone(), face]
    }))
    .expect("a frame record")
}

fn bench_publish(c: &mut Criterion) {
    let Some((_server, port)) = server() else {
        return;
    };
    let fleet = Fleet::connect(&NatsOptions {
        urls: format!("nats://127.0.0.1:{port}"),
        ca: None,
        replicas: None,
    })
    .expect("connect");
    let records = fleet
        .records(&Retention::default())
        .expect("records stream");
    let mut group = c.benchmark_group("fleet_publish");
    const N: u64 = 1000;
    group.throughput(Throughput::Elements(N));
    group.sample_size(20);
    let mut run = 0u64;
    group.bench_function("frame records, 2 faces, acknowledged", |b| {
        b.iter(|| {
            run += 1;
            let mut sink = RecordsSink::new(
                records.clone(),
                "bench",
                &format!("bench-{run}"),
                Default::default(),
            );
            for frame in 0..N {
                sink.write_frame(0, &frame_record(frame), &[])
                    .expect("publish");
            }
            sink.finish().expect("all acknowledged");
        })
    });
    group.finish();
}

criterion_group!(benches, bench_publish);
criterion_main!(benches);
