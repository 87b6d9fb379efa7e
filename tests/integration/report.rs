//! The report read in a real browser (headless Chromium): its charts are there, its text is
//! readable (at least 12 px at 1,280 px wide), every age group is listed; and a screenshot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::*;

/// Chromium, when installed (scripts/deps.sh installs Debian's); under CI its absence fails.
fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/chromium");
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("chromium missing under CI (scripts/deps.sh installs it)");
    }
    eprintln!("SKIPPED: {} not found", path.display());
    None
}

/// Headless Chromium on `page` with `args`, its own profile in `profile`, without reaching
/// out to the network.
fn headless(chromium: &Path, profile: &Path, args: &[String], page: &Path) -> String {
    let out = output_within(
        std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,2400",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(format!("file://{}", page.display())),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two streams' track records (ages in 5 groups, two groups empty) and a few frames.
fn run_records(path: &Path) {
    let mut text = String::new();
    for (i, (stream, group, index, gender)) in [
        ("door", "24-39", 2, "female"),
        ("door", "24-39", 2, "male"),
        ("hall", "40-55", 3, "unknown"),
    ]
    .iter()
    .enumerate()
    {
        let mut probs = vec![0.05; 5];
        probs[*index] = 0.8;
        text.push_str(&format!(
            "{{\"type\":\"frame\",\"stream\":\"{stream}\",\"source\":\"x\",\"frame\":{i},\"pts_ms\":{},\"width\":64,\"height\":48,\"faces\":[]}}\n",
            i * 40
        ));
        text.push_str(&format!(
            "{{\"type\":\"track\",\"stream\":\"{stream}\",\"source\":\"x\",\"track_id\":{i},\"first_frame\":0,\"last_frame\":90,\"first_pts_ms\":{},\"last_pts_ms\":{},\"frames\":90,\"age\":{{\"group\":\"{group}\",\"index\":{index},\"years\":30.0,\"probs\":{probs:?}}},\"gender\":{{\"label\":\"{gender}\",\"prob\":0.9}}}}\n",
            i as f64 * 20_000.0,
            i as f64 * 20_000.0 + 3_600.0
        ));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_report_reads_well_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("run.jsonl");
    run_records(&jsonl);
    let out = dir.path().join("report");
    run_ok(bin().arg("report").arg(&jsonl).arg("--out").arg(&out));
    // The page as it is, with a script that reads what the browser made of it into the DOM.
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    let probe = out.join("probe.html");
    let script = r#"<script>
const sizes = [];
for (const el of document.querySelectorAll('svg text, td, th, p, h1, h2, caption, figcaption')) {
  if (!el.textContent.trim()) continue;
  let px = parseFloat(getComputedStyle(el).fontSize);
  const svg = el.closest('svg');
  if (svg) px *= svg.getBoundingClientRect().width / svg.width.baseVal.value;
  sizes.push(px);
}
const b = document.body;
b.setAttribute('data-min-font-px', Math.min(...sizes).toFixed(2));
b.setAttribute('data-texts', sizes.length);
b.setAttribute('data-charts', document.querySelectorAll('figure svg rect').length > 0
  ? document.querySelectorAll('figure svg').length : 0);
b.setAttribute('data-groups', [...document.querySelectorAll('table.people td:first-child')]
  .map(td => td.textContent).join('|'));
</script></body>"#;
    std::fs::write(&probe, page.replace("</body>", script)).unwrap();
    let profile = dir.path().join("profile");
    let dom = headless(&chromium, &profile, &["--dump-dom".into()], &probe);
    let attribute = |name: &str| {
        let start = dom
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("no {name} in the DOM: {dom}"))
            + name.len()
            + 2;
        dom[start..start + dom[start..].find('"').unwrap()].to_string()
    };
    let min_px: f64 = attribute("data-min-font-px").parse().unwrap();
    assert!(min_px >= 12.0, "text as small as {min_px} px");
    assert!(attribute("data-texts").parse::<usize>().unwrap() > 40);
    // All streams' four charts, then each stream's (door, hall).
    assert_eq!(attribute("data-charts"), "12");
    // Every group of the five, empty ones too, in each table (all streams, door, hall).
    let groups = attribute("data-groups");
    assert_eq!(
        groups.split('|').collect::<Vec<_>>(),
        ["1-11", "12-23", "24-39", "40-55", "56-80"].repeat(3),
        "{groups}"
    );
    // A screenshot of the page as a person sees it: drawn, not blank.
    let shot = dir.path().join("report.png");
    headless(
        &chromium,
        &profile,
        &[format!("--screenshot={}", shot.display())],
        &out.join("index.html"),
    );
    let png = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(png.width(), 1280);
    let inked = png
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 128))
        .count();
    assert!(inked > 10_000, "{inked} dark pixels: a blank page?");
}
