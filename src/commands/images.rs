//! `faceflow detect` and `faceflow analyze`: still images, one record per image.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};

use super::{EXIT_INTERRUPTED, check_json_target, interrupt_flag, refuse_videos};
use crate::cli::{AnalyzeArgs, DetectArgs};
use crate::one_line;
use faceflow::align::{self, AlignConfig};
use faceflow::attributes::{AttributeModel, FacesInImage};
use faceflow::detect::{DetectConfig, Mtcnn};
use faceflow::pipeline::AttributesConfig;
use faceflow::record::{FaceRecord, ImageRecord, Readout};
use faceflow::sinks::{JsonConfig, JsonLinesWriter, OutputError};

pub fn detect(args: DetectArgs) -> Result<ExitCode> {
    refuse_videos("detect", &paths(&args.images))?;
    let (detect, align_config) = args.settings();
    align_config.validate()?;
    faceflow::runtime::use_device(args.detector.device.unwrap_or_default())?;
    let json = args.json.clone().unwrap_or_else(|| "-".into());
    check_json_target(&json, &paths(&args.images))?;
    detect.validate()?;
    if let Some(dir) = &args.crops {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let crop_names = crop_stems(&args.images);
    let crops = args.crops.as_deref();
    let workers = image_workers(detect.effective_workers(), args.images.len());
    let detect = DetectConfig {
        threads: detect.threads_per_worker(workers),
        ..detect
    };
    process_images(&args.images, json, workers, || {
        let mut detector = Mtcnn::new(detect.clone())?;
        let (crop_names, align_config) = (&crop_names, &align_config);
        Ok(move |i: usize, path: &Path| {
            let crops = crops.map(|dir| (dir, crop_names[i].as_str()));
            detect_one(&mut detector, None, path, crops, align_config)
        })
    })
}

/// Raises the flag when the thread that holds it unwinds from a panic.
struct QuitOnPanic<'a>(&'a AtomicBool);

impl Drop for QuitOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Detectors to run side by side on a list of images: one per core (each single-threaded: MTCNN's
/// small convolutions keep one core busier than a thread pool does), no more than images.
/// With a GPU one is enough (each would hold its own sessions in GPU memory).
fn image_workers(workers: usize, images: usize) -> usize {
    if faceflow::runtime::device() == faceflow::runtime::Device::Cuda {
        return 1;
    }
    workers.min(images).max(1)
}

fn paths(images: &[PathBuf]) -> Vec<&Path> {
    images.iter().map(PathBuf::as_path).collect()
}

/// The file-name stem of each image's crops: its own stem, with `-2`, `-3`, … for a later image
/// whose stem is taken (a/x.jpg and b/x.jpg must not overwrite each other's crops).
fn crop_stems(images: &[PathBuf]) -> Vec<String> {
    let mut taken = HashSet::new();
    images
        .iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let mut name = stem.clone();
            let mut n = 1;
            while !taken.insert(name.clone()) {
                n += 1;
                name = format!("{stem}-{n}");
            }
            name
        })
        .collect()
}

/// Writes one record per image, in the order given; a failed image is reported (and gets no
/// record) and the others are still processed. `workers` threads each run what `start` builds
/// (a detector of their own) on the next image not taken; all are built before the output file
/// is created, so a model that fails to load leaves an existing file as it was. A reader that
/// closes the output (`| head`) ends the run quietly.
fn process_images<W>(
    images: &[PathBuf],
    json: String,
    workers: usize,
    start: impl Fn() -> Result<W> + Sync,
) -> Result<ExitCode>
where
    W: FnMut(usize, &Path) -> Result<ImageRecord> + Send,
{
    // Built side by side: each loads and optimises its own networks (tens of milliseconds).
    let built: Vec<W> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.max(1)).map(|_| scope.spawn(&start)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<_>>()
    })?;
    let mut writer = JsonLinesWriter::create(&JsonConfig { path: json })?;
    let mut failures = 0usize;
    let bar = super::progress(Some(images.len() as u64), "images");
    if images.len() <= 1 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let stop = interrupt_flag("stopping after the images in work");
    let started = std::time::Instant::now();
    let next = AtomicUsize::new(0);
    // Set when the output is gone or failed, or a worker panicked: the others stop taking images.
    let quit = AtomicBool::new(false);
    let (results, received) = crossbeam_channel::bounded::<(usize, Result<ImageRecord>)>(workers);
    let mut finished = 0;
    let outcome: Result<Option<ExitCode>> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for mut one in built {
            let results = results.clone();
            let (next, quit, stop) = (&next, &quit, &stop);
            handles.push(scope.spawn(move || {
                // A worker that panics stops the others (its image's record would never come,
                // and every later one would wait for it).
                let _panic_stops_all = QuitOnPanic(quit);
                while !quit.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(path) = images.get(i) else { break };
                    if results.send((i, one(i, path))).is_err() {
                        break;
                    }
                }
            }));
        }
        drop(results);
        // Records leave in the images' order: those done early wait here for the ones before.
        let mut waiting = std::collections::BTreeMap::new();
        let mut outcome = Ok(None);
        for (i, result) in received.iter() {
            waiting.insert(i, result);
            while let Some(result) = waiting.remove(&finished) {
                finished += 1;
                super::show_rate(&bar, finished as u64, started);
                if outcome.as_ref().is_ok_and(Option::is_some) || outcome.is_err() {
                    continue;
                }
                match result {
                    Ok(record) => match writer.write(&record) {
                        Ok(()) => {}
                        Err(e) if e.is_broken_pipe() => {
                            quit.store(true, Ordering::SeqCst);
                            outcome = Ok(Some(ExitCode::SUCCESS));
                        }
                        Err(e) => {
                            quit.store(true, Ordering::SeqCst);
                            outcome = Err(e.into());
                        }
                    },
                    Err(e) => {
                        // Keep going: one unreadable image must not cost the results of the others.
                        bar.suspend(|| faceflow::say!("error: {}", one_line(&e)));
                        failures += 1;
                    }
                }
            }
        }
        for handle in handles {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        outcome
    });
    bar.finish_and_clear();
    if let Some(code) = outcome? {
        return Ok(code);
    }
    match writer.flush() {
        Err(e) if e.is_broken_pipe() => return Ok(ExitCode::SUCCESS),
        other => other?,
    }
    if stop.load(Ordering::SeqCst) && finished < images.len() {
        faceflow::say!(
            "faceflow: interrupted after {finished} of {} images; their records are complete",
            images.len()
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if failures > 0 {
        bail!(
            "{failures} of {} images could not be processed (they have no record)",
            images.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn analyze(args: AnalyzeArgs) -> Result<ExitCode> {
    refuse_videos("analyze", &paths(&args.images))?;
    let (detect, attributes) = args.settings();
    attributes.validate()?;
    detect.validate()?;
    faceflow::runtime::use_device(args.detector.device.unwrap_or_default())?;
    let json = args.json.clone().unwrap_or_else(|| "-".into());
    check_json_target(&json, &paths(&args.images))?;
    let workers = image_workers(detect.effective_workers(), args.images.len());
    let detect = DetectConfig {
        threads: detect.threads_per_worker(workers),
        ..detect
    };
    let attributes = AttributesConfig {
        threads: if workers > 1 { 1 } else { attributes.threads },
        ..attributes
    };
    let align_config = AlignConfig::default();
    process_images(&args.images, json, workers, || {
        let (mut model, readout) = attributes.load()?.context("attributes are switched off")?;
        let mut detector = Mtcnn::new(detect.clone())?;
        let align_config = &align_config;
        Ok(move |_: usize, path: &Path| {
            detect_one(
                &mut detector,
                Some((&mut model, &readout)),
                path,
                None,
                align_config,
            )
        })
    })
}

/// An attribute model and how its readings are read out.
type Attributes<'a> = Option<(&'a mut AttributeModel, &'a Readout)>;

fn detect_one(
    detector: &mut Mtcnn,
    attributes: Attributes<'_>,
    path: &Path,
    crops: Option<(&Path, &str)>,
    align_config: &AlignConfig,
) -> Result<ImageRecord> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    let image = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .with_context(|| format!("{}: cannot open", path.display()))?
        .decode()
        .with_context(|| format!("{}: not a readable image", path.display()))?
        .into_rgb8();
    let (width, height) = image.dimensions();
    let faces = detector
        .detect_still(image.as_raw(), width as usize, height as usize)
        .with_context(|| format!("{}: detection failed", path.display()))?;
    if let Some((dir, stem)) = crops {
        for (i, face) in faces.iter().enumerate() {
            let Some(crop) = align::align_face(
                image.as_raw(),
                width as usize,
                height as usize,
                &face.landmarks,
                align_config,
            ) else {
                tracing::warn!(image = %path.display(), face = i, "degenerate landmarks, no crop");
                continue;
            };
            let side = align_config.crop_px;
            let out = dir.join(format!("{stem}_face{i}.png"));
            image::RgbImage::from_raw(side, side, crop)
                .context("crop buffer size")?
                .save(&out)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
    }
    let faces = match attributes {
        None => faces.into_iter().map(FaceRecord::detection).collect(),
        Some((model, readout)) => {
            let image_faces = FacesInImage {
                rgb: image.as_raw(),
                width: width as usize,
                height: height as usize,
                faces: faces.iter().collect(),
            };
            let read = model
                .read_faces(&[image_faces])
                .with_context(|| format!("{}: attribute model failed", path.display()))?
                .into_iter()
                .next()
                .unwrap_or_default();
            faces
                .into_iter()
                .zip(read)
                .map(|(face, read)| match read {
                    Some(r) => {
                        FaceRecord::with_attributes(face, &r.combined(), readout, r.read_twice())
                    }
                    None => FaceRecord::detection(face),
                })
                .collect()
        }
    };
    Ok(ImageRecord {
        image: path.display().to_string(),
        width,
        height,
        faces,
    })
}
