//! `faceflow detect` and `faceflow analyze`: still images, one record per image.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};

use super::{EXIT_INTERRUPTED, check_json_target, interrupt_flag};
use crate::cli::{AnalyzeArgs, DetectArgs};
use crate::one_line;
use faceflow::align::{self, AlignConfig};
use faceflow::attributes::{AttributeModel, FacesInImage};
use faceflow::detect::Mtcnn;
use faceflow::model::AgeGrouping;
use faceflow::sinks::{FaceRecord, ImageRecord, JsonConfig, JsonLinesWriter};

pub fn detect(args: DetectArgs) -> Result<ExitCode> {
    let (detect, align_config) = args.settings();
    align_config.validate()?;
    let json = args.json.clone().unwrap_or_else(|| "-".into());
    check_json_target(&json, &paths(&args.images))?;
    let mut detector = Mtcnn::new(detect)?;
    if let Some(dir) = &args.crops {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let crop_names = crop_stems(&args.images);
    let crops = args.crops.clone();
    process_images(&args.images, json, |i, path| {
        let crops = crops.as_deref().map(|dir| (dir, crop_names[i].as_str()));
        detect_one(&mut detector, None, path, crops, &align_config)
    })
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

/// Writes one record per image; a failed image is reported (and gets no record) and the others
/// are still processed. A reader that closes the output (`| head`) ends the run quietly.
fn process_images(
    images: &[PathBuf],
    json: String,
    mut one: impl FnMut(usize, &Path) -> Result<ImageRecord>,
) -> Result<ExitCode> {
    let mut writer = JsonLinesWriter::create(&JsonConfig { path: json })?;
    let mut failures = 0usize;
    let bar = super::progress(Some(images.len() as u64), "images");
    if images.len() <= 1 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let stop = interrupt_flag("stopping after this image");
    let mut finished = 0;
    let started = std::time::Instant::now();
    for (done, path) in images.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        finished = done + 1;
        super::show_rate(&bar, done as u64, started);
        match one(done, path) {
            Ok(record) => match writer.write(&record) {
                Ok(()) => {}
                Err(e) if e.is_broken_pipe() => {
                    bar.finish_and_clear();
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => {
                // Keep going: one unreadable image must not cost the results of the others.
                bar.suspend(|| faceflow::say!("error: {}", one_line(&e)));
                failures += 1;
            }
        }
    }
    bar.finish_and_clear();
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
    let (detect, attributes) = args.settings();
    attributes.validate()?;
    detect.validate()?;
    let json = args.json.clone().unwrap_or_else(|| "-".into());
    check_json_target(&json, &paths(&args.images))?;
    let (mut model, grouping) = attributes.load()?.context("attributes are switched off")?;
    let mut detector = Mtcnn::new(detect)?;
    let align_config = AlignConfig::default();
    process_images(&args.images, json, |_, path| {
        detect_one(
            &mut detector,
            Some((&mut model, grouping)),
            path,
            None,
            &align_config,
        )
    })
}

/// An attribute model and the age grouping to report.
type Attributes<'a> = Option<(&'a mut AttributeModel, AgeGrouping)>;

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
        .to_rgb8();
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
        Some((model, grouping)) => {
            let image_faces = FacesInImage {
                rgb: image.as_raw(),
                width: width as usize,
                height: height as usize,
                faces: faces.iter().collect(),
            };
            let predicted = model
                .predict_faces(&[image_faces])
                .with_context(|| format!("{}: attribute model failed", path.display()))?;
            let spec = model.spec().clone();
            faces
                .into_iter()
                .zip(predicted.into_iter().flatten())
                .map(|(face, p)| match p {
                    Some(p) => FaceRecord::with_attributes(face, &p, &spec, grouping),
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
