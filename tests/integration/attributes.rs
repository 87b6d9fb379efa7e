//! Age, gender and race: `analyze`, `run` with the attribute stage, `eval`, model checks, and (with
//! feature `train`) a smoke run of the trainer with export parity.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::*;

const AGE3: [&str; 3] = ["1-26", "27-52", "53-80"];
const AGE10: [&str; 10] = [
    "1-8", "9-16", "17-24", "25-32", "33-40", "41-48", "49-56", "57-64", "65-72", "73-80",
];

fn default_model() -> PathBuf {
    project_root().join("models/faceattr.onnx")
}

/// Checks one face's attribute fields against the documented schema and label sets.
fn assert_attributes(face: &Value, groups: &[&str]) {
    let age = &face["age"];
    let index = age["index"].as_u64().expect("age.index") as usize;
    assert_eq!(age["group"].as_str(), Some(groups[index]), "{face}");
    let probs: Vec<f64> = age["probs"]
        .as_array()
        .expect("age.probs")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(probs.len(), groups.len());
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 0.01, "{probs:?}");
    let best = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert!(
        (probs[best] - probs[index]).abs() < 1e-6,
        "index is the argmax"
    );
    let years = age["years"].as_f64().expect("age.years");
    assert!((1.0..=80.0).contains(&years), "{years}");
    // "unknown" only below the default threshold (0.6).
    let gender = face["gender"]["label"].as_str().unwrap();
    let p = face["gender"]["prob"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&p), "{p}");
    assert!(["male", "female"].contains(&gender) || gender == "unknown" && p < 0.6);
    let race = face["race"]["label"].as_str().unwrap();
    let p = face["race"]["prob"].as_f64().unwrap();
    assert!(
        ["white", "black", "asian", "indian", "others"].contains(&race)
            || race == "unknown" && p < 0.6,
        "{race} {p}"
    );
}

/// `--unknown-below P`: a gender or race under P reads "unknown" (1 makes every one so, 0 none);
/// a P outside 0–1 is one error line naming the flag.
#[test]
fn unsure_labels_read_unknown_below_the_threshold() {
    let Some(img) = shared_data("utkface/26_1_2_20170103181524137.jpg.chip.jpg") else {
        return;
    };
    let labels = |threshold: &str| -> Vec<String> {
        let out = run_ok(
            bin()
                .args(["analyze", "--json", "-", "--unknown-below", threshold])
                .arg(&img),
        );
        let record: Value = serde_json::from_slice(&out.stdout).unwrap();
        let face = &record["faces"][0];
        ["gender", "race"]
            .iter()
            .map(|k| face[k]["label"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(labels("1"), ["unknown", "unknown"]);
    assert!(labels("0").iter().all(|l| l != "unknown"));
    let out = bin()
        .args(["analyze", "--unknown-below", "1.5"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--unknown-below"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn analyze_reports_age_gender_race_per_face() {
    let (Some(a), Some(b)) = (
        shared_data("utkface/26_1_2_20170103181524137.jpg.chip.jpg"),
        shared_data("utkface/100_0_0_20170112213500903.jpg.chip.jpg"),
    ) else {
        return;
    };
    let out = run_ok(
        bin()
            .args(["analyze", "--json", "-", "--age-groups", "3"])
            .arg(&a)
            .arg(&b),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["image"].as_str(), a.to_str());
    for r in &records {
        let faces = r["faces"].as_array().unwrap();
        assert!(!faces.is_empty(), "{r}");
        for face in faces {
            assert_attributes(face, &AGE3);
        }
    }
}

#[test]
fn run_adds_attributes_to_every_face_and_detection_only_on_request() {
    let Some(clip) = shared_data("video/intel_head-pose-face-detection-female.mp4") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    run_ok(
        bin()
            .args(["run", "--age-groups", "10", "--input"])
            .arg(&clip)
            .arg("--json")
            .arg(&json),
    );
    let records = read_jsonl(&json);
    assert_eq!(records.len(), 23);
    let mut faces = 0;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["frame"], i as u64);
        for face in r["faces"].as_array().unwrap() {
            assert_attributes(face, &AGE10);
            faces += 1;
        }
    }
    assert!(faces >= 20, "{faces} faces");

    run_ok(
        bin()
            .args(["run", "--no-attributes", "--input"])
            .arg(&clip)
            .arg("--json")
            .arg(&json),
    );
    let records = read_jsonl(&json);
    let face = records
        .iter()
        .flat_map(|r| r["faces"].as_array().unwrap().iter())
        .next()
        .expect("a face");
    assert!(
        face.get("bbox").is_some() && face.get("age").is_none(),
        "{face}"
    );
}

fn expect_error(args: &[&str], extra: &[&Path], needle: &str) {
    let out = bin().args(args).args(extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert_eq!(
        stderr.matches(needle).count(),
        1,
        "{stderr}: {needle:?} once, not repeated by a wrapper"
    );
    assert!(!stderr.contains("panicked"));
}

/// `analyze --json -` with `model` on `img`: the first JSON record.
fn analyze_first_record(model: &Path, img: &Path) -> Value {
    let out = run_ok(
        bin()
            .args(["analyze", "--json", "-", "--model"])
            .arg(model)
            .arg(img),
    );
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap()
}

/// A copy of the default model with `from` replaced by `to` (same length) in its spec.
fn edited_model(dir: &Path, from: &str, to: &str) -> PathBuf {
    assert_eq!(from.len(), to.len(), "protobuf lengths must not change");
    let mut bytes = std::fs::read(default_model()).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from} not in the model's spec"));
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    let path = dir.join(format!("edited-{}.onnx", to.replace(['"', ':'], "")));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn bad_models_are_refused_with_one_line() {
    let Some(img) = shared_data("utkface/26_1_2_20170103181524137.jpg.chip.jpg") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.onnx");
    let text = dir.path().join("text.onnx");
    std::fs::write(&text, "not a model").unwrap();
    let mtcnn = project_root().join("models/mtcnn/pnet.onnx");
    // A spec whose input size disagrees with the graph: the shipped model's size, changed.
    let side = faceflow::attributes::AttributeModel::load(&default_model(), 1)
        .unwrap()
        .spec()
        .input_px();
    let other = if side == 96 { 88 } else { 96 };
    let wrong_size = edited_model(
        dir.path(),
        &format!("\"size_px\":{side}"),
        &format!("\"size_px\":{other}"),
    );
    let disagree = format!(
        "input shape and its spec disagree: [-1, 3, {side}, {side}], its spec says [batch, 3, {other}, {other}]"
    );
    let future = edited_model(dir.path(), "\"spec_version\":1", "\"spec_version\":7");
    for (model, needle) in [
        (&missing, "cannot read the attribute model"),
        (&text, "not a loadable ONNX model"),
        (&mtcnn, "has no faceflow model spec"),
        (&wrong_size, disagree.as_str()),
        (&future, "spec version 7"),
    ] {
        expect_error(&["analyze", "--model"], &[model, &img], needle);
        expect_error(
            &[
                "run",
                "--input",
                "testsrc://ball?frames=2",
                "--json",
                "/dev/null",
                "--model",
            ],
            &[model],
            needle,
        );
    }
    let out = bin()
        .args(["analyze", "--age-groups", "4"])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("age groups must be 3, 5 or 10"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn eval_writes_json_markdown_and_charts() {
    let Some(utk) = shared_data("utkface") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let out = run_ok(
        bin()
            .arg("eval")
            .arg("--source")
            .arg(&utk)
            .args(["--split", "validation", "--max-images", "30", "--report"])
            .arg(&report)
            // v10 never saw this split (the shipped model trained on every image: refused).
            .args(["--model", "models/teachers/v10.onnx"])
            .arg("--calibrate")
            .arg(dir.path().join("m.calibration.json")),
    );
    // The temperatures, fitted on these images, with each head's calibration error.
    let calibration: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("m.calibration.json")).unwrap(),
    )
    .unwrap();
    for head in ["age", "gender", "gender_alone", "race"] {
        let t = calibration[head].as_f64().unwrap();
        assert!((0.1..=10.0).contains(&t), "{head}: {t}");
    }
    assert!(
        calibration["fitted_on"]
            .as_str()
            .unwrap()
            .contains("validation split"),
        "{calibration}"
    );
    let heads: Vec<&str> = calibration["ece"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["head"].as_str().unwrap())
        .collect();
    assert_eq!(
        heads,
        [
            "gender",
            "gender_alone",
            "race",
            "race_alone",
            "age3",
            "age5",
            "age10"
        ]
    );
    let page = std::fs::read_to_string(report.join("calibration.md")).unwrap();
    assert!(
        page.contains("| 0.60 |") && page.contains("| gender |"),
        "{page}"
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with("age3 ") && line.contains("(30 images"),
        "{line}"
    );
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["tally"]["images"], 30);
    assert_eq!(json["split"], "validation");
    // predictions.jsonl: one record per image whose verdicts add up to the report's totals.
    let records: Vec<Value> = std::fs::read_to_string(report.join("predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 30);
    let gender_right = records
        .iter()
        .filter(|r| r["correct"]["gender"] == true)
        .count() as f64;
    let gender = &json["tally"]["gender"]["counts"];
    assert_eq!(
        gender_right,
        gender[0][0].as_f64().unwrap() + gender[1][1].as_f64().unwrap()
    );
    let first = &records[0];
    assert!(first["file"].as_str().unwrap().ends_with(".jpg"), "{first}");
    // The probabilities the temperatures are fitted on.
    if !first["predicted"].is_null() {
        let gender: Vec<f64> = first["probs"]["gender"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(gender.len() == 2 && (gender[0] + gender[1] - 1.0).abs() < 1e-4);
        assert_eq!(first["probs"]["age_fine"].as_array().unwrap().len(), 80);
    }
    assert!(first["truth"]["age_years"].is_u64(), "{first}");
    if !first["predicted"].is_null() {
        let age5 = first["predicted"]["age5"].as_str().unwrap();
        assert!(["1-11", "12-23", "24-39", "40-55", "56-80"].contains(&age5));
        let right = first["correct"]["race"] == true;
        assert_eq!(right, first["predicted"]["race"] == first["truth"]["race"]);
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("| age, 5 groups |") && md.contains("## Race"));
    assert!(md.contains("## Gender and race by true age"), "{md}");
    for name in [
        "confusion_age5.svg",
        "confusion_race.svg",
        "accuracy_per_age_group10.svg",
    ] {
        let svg = std::fs::read_to_string(report.join(name)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{name}");
    }
    let race = std::fs::read_to_string(report.join("confusion_race.svg")).unwrap();
    assert!(race.contains("asian") && race.contains("predicted"));
}

#[cfg(feature = "train")]
#[test]
fn train_smoke_run_resumes_exports_and_matches_onnx_runtime() {
    let Some(utk) = shared_data("utkface") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cache = dir.path().join("cache");
    let train = |epochs: &str, resume: bool| {
        let mut cmd = bin();
        cmd.arg("train")
            .arg("--source")
            .arg(&utk)
            .arg("--out")
            .arg(&run)
            .arg("--cache")
            .arg(&cache)
            .args(["--net", "tiny", "--max-images", "240", "--batch", "16"])
            .args(["--epochs", epochs]);
        if resume {
            cmd.arg("--resume");
        }
        run_ok(&mut cmd)
    };
    let out = train("1", false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("malformed names skipped"), "{stderr}");
    assert!(stderr.contains("epoch 1/1"), "{stderr}");
    // Progress of the crop cache shows in a log too (no terminal here).
    assert!(
        stderr.contains("detecting and aligning faces: 240/240 images"),
        "{stderr}"
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["history"].as_array().unwrap().len(), 1);
    // The trainer compared ONNX Runtime with burn's forward pass on real crops.
    let check = std::fs::read_to_string(run.join("export_check.txt")).unwrap();
    let diff: f64 = check
        .lines()
        .find_map(|l| l.strip_prefix("max_abs_diff "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(diff <= 1e-4, "{check}");
    // A second run into the same folder must not overwrite it silently.
    let again = bin()
        .arg("train")
        .arg("--source")
        .arg(&utk)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // Resume continues with epoch 2 and the crop cache is reused.
    let out = train("2", true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("resumed") && stderr.contains("epoch 2/2"),
        "{stderr}"
    );
    assert!(!stderr.contains("new crops"), "cache not reused: {stderr}");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["history"].as_array().unwrap().len(), 2);
    // Every epoch's network is kept, and their mean exports (batch norm re-estimated, validated).
    let average = |files: &str| {
        bin()
            .arg("train")
            .arg("--out")
            .arg(&run)
            .arg("--cache")
            .arg(&cache)
            .args(["--export-only", "--average", files, "--export"])
            .arg(run.join("mean.onnx"))
            .output()
            .unwrap()
    };
    let out = average("epoch-1.bpk,epoch-2.bpk");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("mean of epoch-1.bpk, epoch-2.bpk: validation age3 "),
        "{stderr}"
    );
    assert!(run.join("mean.onnx").exists());
    let out = average("epoch-1.bpk,epoch-9.bpk");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("epoch-9.bpk"), "{stderr}");
    // The exported model is one the runtime accepts.
    let img = utk.join("26_1_2_20170103181524137.jpg.chip.jpg");
    let out = run_ok(
        bin()
            .args(["analyze", "--json", "-", "--model"])
            .arg(run.join("mean.onnx"))
            .arg(&img),
    );
    let record: Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_attributes(
        &record["faces"][0],
        &["1-11", "12-23", "24-39", "40-55", "56-80"],
    );
    // The model records its split: eval says when a validation split reaches into its training
    // images (a larger fraction than it trained with) and is quiet on its own.
    let eval = |val_fraction: &str| {
        let report = dir.path().join(format!("eval-{val_fraction}"));
        let out = run_ok(
            bin()
                .arg("eval")
                .arg("--source")
                .arg(&utk)
                .arg("--model")
                .arg(run.join("mean.onnx"))
                .args(["--split", "validation", "--max-images", "8"])
                .args(["--val-fraction", val_fraction, "--report"])
                .arg(&report),
        );
        let md = std::fs::read_to_string(report.join("report.md")).unwrap();
        (String::from_utf8_lossy(&out.stderr).into_owned(), md)
    };
    let (stderr, md) = eval("0.15");
    assert!(
        !stderr.contains("warning") && !md.contains("Warning"),
        "{stderr}"
    );
    let json = std::fs::read_to_string(dir.path().join("eval-0.15/report.json")).unwrap();
    assert!(!json.contains("training_overlap"), "{json}");
    let (stderr, md) = eval("0.3");
    assert!(
        stderr.contains(
            "warning: the model was trained with another split (--seed 42 --val-fraction 0.15)"
        ),
        "{stderr}"
    );
    assert!(
        md.contains("**Warning**: the model was trained with another split"),
        "{md}"
    );
}

/// Ctrl-C while the crop cache fills (a minute or more on a full data set) stops at once and keeps the
/// crops made so far; the run has not started, so nothing else is written.
#[cfg(feature = "train")]
#[test]
fn interrupted_crop_caching_stops_promptly_and_keeps_its_crops() {
    let Some(utk) = shared_data("utkface") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (run, cache) = (dir.path().join("run"), dir.path().join("cache"));
    let mut child = bin()
        .arg("train")
        .arg("--source")
        .arg(&utk)
        .arg("--out")
        .arg(&run)
        .arg("--cache")
        .arg(&cache)
        .args(["--net", "tiny", "--max-images", "3000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once some crops are written (the file starts with an 8-byte header).
    let cache_bytes = || {
        std::fs::read_dir(&cache)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum::<u64>()
    };
    let started = std::time::Instant::now();
    while cache_bytes() <= 8 && started.elapsed() < std::time::Duration::from_secs(120) {
        assert!(child.try_wait().unwrap().is_none(), "train ended early");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let at_signal = cache_bytes();
    assert!(at_signal > 8, "no crop cached within 120 s");
    let (out, took) = interrupt(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "took {took:?}: {stderr}"
    );
    assert!(
        stderr.contains("stopped while detecting and aligning faces")
            && stderr.contains("run the same command again"),
        "{stderr}"
    );
    assert!(!stderr.contains("epoch 1/"), "{stderr}");
    assert!(!run.join("state.json").exists());
    // What was cached stays, and the cache was not complete when the run stopped.
    let kept = cache_bytes();
    assert!(kept >= at_signal, "{kept} < {at_signal}");
    assert!(
        !stderr.contains("3000/3000 images"),
        "not interrupted: {stderr}"
    );
}

#[test]
fn flip_averaging_reads_a_face_and_its_mirror_alike() {
    use faceflow::attributes::AttributeModel;
    let mut model = AttributeModel::load(&default_model(), 1).unwrap();
    let side = model.spec().input_px();
    // A real face crop: the demo portrait through detection and alignment.
    let image = image::open(project_root().join("samples/astronaut.png"))
        .unwrap()
        .to_rgb8();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut mtcnn = faceflow::detect::Mtcnn::new(Default::default()).unwrap();
    let faces = mtcnn.detect(image.as_raw(), w, h).unwrap();
    let face = faceflow::detect::largest_face(&faces).unwrap();
    let crop = model.crop(image.as_raw(), w, h, face).unwrap();
    let mirror: Vec<u8> = crop
        .chunks_exact(side * 3)
        .flat_map(|row| {
            row.chunks_exact(3)
                .rev()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
        })
        .collect();
    let plain = model.predict(&[crop.clone(), mirror.clone()]).unwrap();
    model.set_flip_average(true);
    let averaged = model.predict(&[crop, mirror]).unwrap();
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
    // With averaging, a crop and its mirror are the same input twice.
    assert!(close(&averaged[0].age_fine, &averaged[1].age_fine));
    assert!(close(&averaged[0].gender, &averaged[1].gender));
    assert!(close(&averaged[0].race, &averaged[1].race));
    // Without it they differ (the network is not symmetric), so the test above has teeth.
    assert!(!close(&plain[0].age_fine, &plain[1].age_fine));
}

#[test]
fn interrupted_eval_writes_a_report_of_the_images_done() {
    let Some(dir) = shared_data("utkface") else {
        return;
    };
    let report = tempfile::tempdir().unwrap();
    let (out, took) = interrupt_after(
        bin()
            .args(["eval", "--source"])
            .arg(&dir)
            .arg("--report")
            .arg(report.path()),
        std::time::Duration::from_secs(6),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["interrupted"], true);
    let images = json["tally"]["images"].as_u64().unwrap();
    assert!(images > 0 && images < 20_000, "{images}");
    let md = std::fs::read_to_string(report.path().join("report.md")).unwrap();
    assert!(md.contains("**Interrupted**"), "{md}");
}

/// A model aligned with a wider margin trains, carries its margin in its spec, and the runtime
/// crops faces with it; a teacher of another margin teaches from the cached crop when that holds
/// its window, and is refused before any work when it does not.
#[cfg(feature = "train")]
#[test]
fn a_model_with_another_margin_trains_exports_and_runs() {
    let Some(utk) = shared_data("utkface") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let train_with = |out: &str, margin: &str, extra: &[&std::ffi::OsStr]| {
        bin()
            .arg("train")
            .arg("--source")
            .arg(&utk)
            .arg("--out")
            .arg(dir.path().join(out))
            .arg("--cache")
            .arg(dir.path().join("cache"))
            .args(["--net", "tiny", "--max-images", "64", "--batch", "16"])
            .args(["--margin", margin])
            .args(extra)
            .output()
            .unwrap()
    };
    let train = |out: &str, extra: &[&std::ffi::OsStr]| train_with(out, "0.4", extra);
    // Age and gender only: race is not scored (NaN in the saved history), and the run resumes.
    let age_gender = ["--tasks".as_ref(), "age,gender".as_ref()];
    let trained = train(
        "wide",
        &[&age_gender[..], &["--epochs".as_ref(), "1".as_ref()]].concat(),
    );
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let state = std::fs::read_to_string(dir.path().join("wide/state.json")).unwrap();
    let saved: Value = serde_json::from_str(&state).unwrap();
    assert!(saved["history"][0]["race"].is_null(), "{state}");
    let resumed = train(
        "wide",
        &[
            &age_gender[..],
            &["--resume".as_ref(), "--epochs".as_ref(), "2".as_ref()],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(
        stderr.contains("epoch 2/2") && stderr.contains("race n/a"),
        "{stderr}"
    );
    let model = dir.path().join("wide/faceattr.onnx");
    let loaded = faceflow::attributes::AttributeModel::load(&model, 1).unwrap();
    assert_eq!(loaded.spec().input.margin, 0.4);
    // eval writes no label for the untrained race head (its output is noise), and scores none.
    let report = dir.path().join("wide-eval");
    run_ok(
        bin()
            .args(["eval", "--max-images", "12", "--source"])
            .arg(&utk)
            .arg("--model")
            .arg(&model)
            .arg("--report")
            .arg(&report),
    );
    let lines = std::fs::read_to_string(report.join("predictions.jsonl")).unwrap();
    let predicted: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["predicted"].clone())
        .filter(|p| !p.is_null())
        .collect();
    assert!(!predicted.is_empty(), "{lines}");
    for p in &predicted {
        assert!(p["gender"].is_string() && p.get("race").is_none(), "{p}");
    }
    // What the runtime crops for this model is the centre of what the trainer cached for it (the
    // run's own cache file, found by the model's alignment), and not the default margin's crop.
    let side = loaded.spec().input_px();
    let cache = faceflow::train::data::CropCache::open(
        &dir.path().join("cache"),
        &faceflow::detect::DetectConfig::default(),
        &loaded.spec().align(),
    )
    .unwrap();
    assert!(
        !cache.is_empty(),
        "the run's crops are not under the model's alignment"
    );
    let mut names: Vec<_> = std::fs::read_dir(&utk)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let (img, cached) = names
        .iter()
        .find_map(|path| {
            let hash = faceflow::model::dataset::content_hash(&std::fs::read(path).ok()?);
            Some((path.clone(), cache.get(hash)?.clone()?))
        })
        .expect("an image of the run with a cached face");
    let picture = image::open(&img).unwrap().to_rgb8();
    let (w, h) = (picture.width() as usize, picture.height() as usize);
    let mut detector =
        faceflow::detect::Mtcnn::new(faceflow::detect::DetectConfig::default()).unwrap();
    let faces = detector.detect_still(picture.as_raw(), w, h).unwrap();
    let face = faceflow::detect::largest_face(&faces).unwrap();
    let served = loaded.crop(picture.as_raw(), w, h, face).unwrap();
    let border = faceflow::train::data::CACHE_BORDER_PX as usize;
    let cache_side = side + 2 * border;
    let mut centre = Vec::with_capacity(side * side * 3);
    for row in border..border + side {
        let at = (row * cache_side + border) * 3;
        centre.extend_from_slice(&cached[at..at + side * 3]);
    }
    let largest_difference =
        |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    assert!(
        largest_difference(&served, &centre) <= 1,
        "trainer and runtime crop differently"
    );
    let default_margin = faceflow::attributes::crop_for_model(
        picture.as_raw(),
        w,
        h,
        face,
        &faceflow::model::spec::model_align(side as u32, faceflow::model::spec::INPUT_MARGIN),
    )
    .unwrap();
    assert!(
        largest_difference(&served, &default_margin) > 40,
        "the margin made no difference"
    );
    let record = analyze_first_record(&model, &img);
    assert!(
        record["faces"][0]["gender"]["label"].is_string(),
        "{record}"
    );
    assert!(
        record["faces"][0]["race"].is_null(),
        "an untrained head is not reported: {record}"
    );
    // The shipped model (margin 0.15) teaches this 0.4 run: its window lies inside the crop.
    let one_epoch = ["--epochs".as_ref(), "1".as_ref()];
    let taught = train(
        "taught",
        &[
            &one_epoch[..],
            &["--teacher".as_ref(), default_model().as_os_str()],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&taught.stderr);
    assert!(taught.status.success(), "{stderr}");
    assert!(stderr.contains(" faces in "), "{stderr}");
    // Resumed (to `epochs`, with or without --teacher): whether it succeeded, and what it said.
    let resume = |epochs: &str, teacher: Option<&Path>| {
        let mut args = vec!["--resume".as_ref(), "--epochs".as_ref(), epochs.as_ref()];
        if let Some(teacher) = teacher {
            args.extend(["--teacher".as_ref(), teacher.as_os_str()]);
        }
        let out = train("taught", &args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Resumed, the run reads its teachers' targets back instead of running the teachers again.
    let (ok, stderr) = resume("2", None);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("teacher targets read from") && !stderr.contains(" faces in "),
        "{stderr}"
    );
    assert!(stderr.contains("epoch 2/2"), "{stderr}");
    // A run whose teachers moved is told where they are; another model in their place is
    // refused before any work. The new paths are saved at once: here the run has no epoch
    // left, so no checkpoint would save them.
    let moved = dir.path().join("moved-teacher.onnx");
    std::fs::copy(default_model(), &moved).unwrap();
    let another = project_root().join("models/teachers/v4.onnx");
    let (ok, stderr) = resume("3", Some(&another));
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("not the ones this run started with") && !stderr.contains("epoch 3/3"),
        "{stderr}"
    );
    let (ok, stderr) = resume("2", Some(&moved));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("teachers read from the --teacher paths") && !stderr.contains(" loss "),
        "{stderr}"
    );
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("taught").join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["config"]["teachers"][0].as_str().map(Path::new),
        Some(moved.as_path()),
        "the new path is not saved with the run"
    );
    // Without --teacher, the run goes on with the moved copy.
    let (ok, stderr) = resume("3", None);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("teacher targets read from") && stderr.contains("epoch 3/3"),
        "{stderr}"
    );
    // The run now reads its teacher from the moved path: gone, the run says how to go on.
    std::fs::remove_file(&moved).unwrap();
    let (ok, stderr) = resume("4", None);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("pass --teacher with them") && !stderr.contains("epoch 4/4"),
        "{stderr}"
    );
    // A teacher that learned some of this run's validation faces (its own validation part is
    // smaller) is named at the start, and the student's model carries the teacher's split, so
    // eval names it too.
    let leaky = train(
        "leaky",
        &[
            &one_epoch[..],
            &["--val-fraction".as_ref(), "0.3".as_ref()],
            &["--teacher".as_ref(), model.as_os_str()],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&leaky.stderr);
    assert!(leaky.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: teacher {} learned from some of this run's validation images",
            model.display()
        )),
        "{stderr}"
    );
    let student = dir.path().join("leaky/faceattr.onnx");
    let training = faceflow::attributes::AttributeModel::load(&student, 1)
        .unwrap()
        .spec()
        .training
        .clone();
    let split = |seed, val_fraction| faceflow::model::spec::TrainingSplit {
        seed,
        val_fraction,
        also_held_out: None,
    };
    assert_eq!(training.split, Some(split(42, 0.3)));
    assert_eq!(training.teacher_splits, vec![Some(split(42, 0.15))]);
    let report = dir.path().join("leaky-eval");
    let out = run_ok(
        bin()
            .args(["eval", "--max-images", "8", "--split", "validation"])
            .args(["--val-fraction", "0.3", "--source"])
            .arg(&utk)
            .arg("--model")
            .arg(&student)
            .arg("--report")
            .arg(&report),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = "a teacher this model was distilled from was trained with another split (--seed 42 --val-fraction 0.15)";
    assert!(stderr.contains(&format!("warning: {said}")), "{stderr}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert!(
        json["training_overlap"].as_str().unwrap().starts_with(said),
        "{json}"
    );
    // The 0.4 model cannot teach a 0.1 run: its window is wider than the cached crop.
    let refused = train_with(
        "narrow",
        "0.1",
        &[&one_epoch[..], &["--teacher".as_ref(), model.as_os_str()]].concat(),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "aligns faces with margin 0.4: it needs more of the head than this run's crops hold"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!dir.path().join("narrow/state.json").exists());
}

/// A model of another input size (72 px) trains (with video-like augmentation, distilled from
/// the shipped 80 px model, whose crops are resampled to its own size), exports with its size in
/// the spec, and the runtime crops faces to that size for it.
#[test]
fn a_model_of_another_input_size_trains_exports_and_runs() {
    let Some(utk) = shared_data("utkface") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let trained = run_ok(
        bin()
            .arg("train")
            .arg("--source")
            .arg(&utk)
            .arg("--out")
            .arg(&run)
            .arg("--cache")
            .arg(dir.path().join("cache"))
            .args(["--net", "tiny", "--max-images", "120", "--batch", "16"])
            .args(["--epochs", "1", "--input-px", "72", "--video-augment"])
            .arg("--teacher")
            .arg(default_model()),
    );
    let log = String::from_utf8_lossy(&trained.stderr);
    assert!(
        log.contains("teacher ") && log.contains(" faces in "),
        "{log}"
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["config"]["distill"], 0.5);
    assert_eq!(state["config"]["video_augment"], true);
    let model = run.join("faceattr.onnx");
    let loaded = faceflow::attributes::AttributeModel::load(&model, 1).unwrap();
    assert_eq!(loaded.spec().input_px(), 72);
    let img = utk.join("26_1_2_20170103181524137.jpg.chip.jpg");
    let record = analyze_first_record(&model, &img);
    assert!(
        record["faces"][0]["gender"]["label"].is_string(),
        "{record}"
    );
    // An input size off the grid, a teacher that is not there, and a blend weight out of range:
    // one line each, no run.
    for (args, needle) in [
        (
            &["--input-px", "100"][..],
            "input_px (--input-px) = 100: must be a multiple of 8",
        ),
        (
            &["--teacher", "/nonexistent/t.onnx"][..],
            "--teacher /nonexistent/t.onnx: no such file",
        ),
        (
            &["--teacher", "/nonexistent/t.onnx", "--distill", "1.5"][..],
            "distill (--distill) = 1.5: must be from 0 to 1",
        ),
        (
            &["--margin", "0.9"][..],
            "margin (--margin) = 0.9: must be from 0.1 to 0.8",
        ),
        (&["--tasks", "gender,race"][..], "--tasks must include age"),
    ] {
        let out = bin()
            .args(["train", "--source"])
            .arg(&utk)
            .arg("--out")
            .arg(dir.path().join("taught"))
            .args(["--max-images", "16"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!dir.path().join("taught").join("state.json").exists());
    }
}

/// `--tasks age,gender` leaves race out of every face and person; a task the model lacks or
/// does not know is one line.
#[test]
fn tasks_switch_attributes_off() {
    let Some(clip) = shared_data("video/intel_head-pose-face-detection-female.mp4") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    run_ok(
        bin()
            .args(["run", "--tasks", "age,gender", "--input"])
            .arg(&clip)
            .arg("--json")
            .arg(&json),
    );
    let records = read_all_jsonl(&json);
    assert!(records.iter().any(|r| r["type"] == "track"));
    let mut said = 0;
    for r in &records {
        let faces = r["faces"].as_array().cloned().unwrap_or_default();
        // Track records and faces alike.
        for item in faces.iter().chain(std::iter::once(r)) {
            assert!(item.get("race").is_none(), "{item}");
            if item.get("gender").is_some() {
                said += 1;
            }
        }
    }
    assert!(said >= 20, "{said} faces and people with a gender");
    let out = bin()
        .args(["run", "--tasks", "age,height", "--input"])
        .arg(&clip)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("height"), "{stderr}");
}

/// `--snapshots DIR`: each person's best face as DIR/<stream>-<track>.jpg, named in their track
/// record; a folder that does not exist is one line before anything is written.
#[test]
fn snapshots_keep_each_persons_best_face() {
    let Some(clip) = shared_data("video/intel_head-pose-face-detection-female.mp4") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let shots = dir.path().join("faces");
    std::fs::create_dir(&shots).unwrap();
    run_ok(
        bin()
            .args(["run", "--snapshots"])
            .arg(&shots)
            .arg("--input")
            .arg(&clip)
            .arg("--json")
            .arg(&json),
    );
    let people = read_tracks(&json);
    assert_eq!(people.len(), 1, "{people:?}");
    let named = people[0]["snapshot"]
        .as_str()
        .expect("the snapshot is named");
    assert_eq!(Path::new(named), shots.join("0-1.jpg"));
    let face = image::open(named).unwrap();
    // The woman's face with a margin: tens of pixels in a 480x270 clip.
    assert!(
        (30..200).contains(&face.width()) && (30..250).contains(&face.height()),
        "{}x{}",
        face.width(),
        face.height()
    );
    let missing = dir.path().join("no-such-folder");
    let json2 = dir.path().join("out2.jsonl");
    let out = bin()
        .args(["run", "--snapshots"])
        .arg(&missing)
        .arg("--input")
        .arg(&clip)
        .arg("--json")
        .arg(&json2)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-folder"), "{stderr}");
    assert!(!json2.exists());
}
