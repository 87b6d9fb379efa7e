//! End-to-end benchmark of streams of very different cost in one process: an endless 3840×2160
//! file-like stream beside a cheap live 320×240 camera, detection only, on two workers (issue 31's
//! reproduction). It runs the real binary for a while, stops it as Ctrl-C would, and prints what
//! each stream kept and how many cores the process used.
//!
//!     cargo bench --bench stream_mix                  # 20 s
//!     FACEFLOW_MIX_SECONDS=60 cargo bench --bench stream_mix
//!     FACEFLOW_BIN=/path/to/other/faceflow cargo bench --bench stream_mix   # another build
//!
//! Not a criterion benchmark: the quantity is a share of frames kept under load, not a time.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    // `cargo bench` passes `--bench`; a filter that names another benchmark skips this one.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !"stream_mix".contains(a.as_str()))
    {
        return;
    }
    let seconds: f64 = std::env::var("FACEFLOW_MIX_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    let bin =
        std::env::var("FACEFLOW_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_faceflow").into());
    let inputs = [
        "testsrc://snow?frames=0&size=3840x2160",
        "testsrc://ball?frames=0&size=320x240&live=true",
    ];
    let mut command = Command::new(&bin);
    command.arg("run");
    for input in inputs {
        command.args(["--input", input]);
    }
    let mut child = command
        .args(["--no-attributes", "--workers", "2", "--json", "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let pid = child.id();
    // Skip start-up (model loading, the first frames) before measuring CPU time.
    std::thread::sleep(Duration::from_secs(2));
    let cpu_start = cpu_seconds(pid);
    let measured_from = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu_end = cpu_seconds(pid);
    let wall = measured_from.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = child.wait();
    println!("stream_mix: {bin}, {seconds:.0} s (+2 s start-up), 2 workers, detection only");
    if !stderr.contains("faceflow: stream ") {
        // It failed or never started: what it said is the story.
        println!("  no summary; the run said:\n{stderr}");
    }
    for line in stderr
        .lines()
        .filter_map(|l| l.strip_prefix("faceflow: "))
        .filter(|l| l.starts_with("stream "))
    {
        println!("  {line}");
        if let Some(kept) = kept_share(line) {
            println!("    kept {:.1} % of its frames", 100.0 * kept);
        }
    }
    match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => println!(
            "  cores in use: {:.2} of 2 (CPU time {:.1} s over {wall:.1} s)",
            (b - a) / wall,
            b - a
        ),
        _ => println!("  cores in use: unknown (no /proc)"),
    }
}

/// CPU seconds (user + system) of process `pid` so far, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let per_second = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    Some(ticks / per_second)
}

/// Reported / decoded from a summary line (`… N frames decoded, M reported, …`).
fn kept_share(line: &str) -> Option<f64> {
    let number_before = |word: &str| -> Option<f64> {
        let at = line.find(word)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    let decoded = number_before(" frames decoded")?;
    let reported = number_before(" reported")?;
    (decoded > 0.0).then(|| reported / decoded)
}
