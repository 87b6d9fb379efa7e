//! Training data: UTKFace-style folders read robustly (malformed names reported and skipped,
//! content duplicates removed), a deterministic seeded split, and aligned crops made by faceflow's
//! own detector and alignment, cached on disk.

use std::collections::HashMap;
use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::align::{AlignConfig, Similarity, warp_rgb};
use crate::detect::{DetectConfig, Mtcnn, largest_face};
use crate::model::dataset::{Sample, content_hash};
use crate::model::spec::INPUT_MARGIN;

use super::TrainError;

/// Crops are cached with this much extra border (pixels, each side) around the model's crop, so
/// augmentation can shift, scale and rotate without running out of picture.
pub const CACHE_BORDER_PX: u32 = 12;
const CACHE_MAGIC: &[u8; 8] = b"FFCROP01";

/// Side of the cached crop for a model input of `input_px`.
pub fn cache_px(input_px: u32) -> u32 {
    input_px + 2 * CACHE_BORDER_PX
}

/// Aligned crops keyed by image content, `cache_px(input_px)`² RGB8 each; `None` where no face
/// was found.
pub struct CropCache {
    path: PathBuf,
    align: AlignConfig,
    crops: HashMap<u64, Option<Vec<u8>>>,
}

impl CropCache {
    /// Opens (or starts) the cache file for these detector settings and the model's alignment
    /// (input size and margin) in `dir`.
    pub fn open(
        dir: &Path,
        detect: &DetectConfig,
        align: &AlignConfig,
    ) -> Result<Self, TrainError> {
        let input_px = align.crop_px;
        let cache_bytes = (cache_px(input_px) * cache_px(input_px) * 3) as usize;
        fs::create_dir_all(dir).map_err(|e| TrainError::Data {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        // Different detector settings make different crops: one file per setting. "still" marks
        // crops found with the still-image retry (older caches without it are left alone).
        let mut key = format!(
            "{}-{:?}-{}-{}-{}-still",
            detect.min_face_px,
            detect.thresholds,
            detect.scale_factor,
            cache_px(input_px),
            input_px
        );
        // The default margin keeps the key caches had before margins could change.
        if align.margin != INPUT_MARGIN {
            key.push_str(&format!("-margin{}", align.margin));
        }
        let path = dir.join(format!("crops-{:016x}.bin", content_hash(key.as_bytes())));
        let mut crops = HashMap::new();
        if let Ok(mut file) = fs::File::open(&path) {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(|e| TrainError::Data {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if bytes.len() < 8 || &bytes[..8] != CACHE_MAGIC {
                return Err(TrainError::Data {
                    path,
                    reason: "not a faceflow crop cache (delete it to rebuild)".into(),
                });
            }
            let mut at = 8;
            // A run killed mid-write leaves a partial last entry: stop at it, it is rebuilt.
            while at + 9 <= bytes.len() {
                let hash = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
                let found = bytes[at + 8] == 1;
                at += 9;
                if found {
                    if at + cache_bytes > bytes.len() {
                        break;
                    }
                    crops.insert(hash, Some(bytes[at..at + cache_bytes].to_vec()));
                    at += cache_bytes;
                } else {
                    crops.insert(hash, None);
                }
            }
        }
        Ok(Self {
            path,
            align: align.clone(),
            crops,
        })
    }

    pub fn get(&self, hash: u64) -> Option<&Option<Vec<u8>>> {
        self.crops.get(&hash)
    }

    pub fn len(&self) -> usize {
        self.crops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.crops.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Detects and aligns every sample not yet cached, on `workers` threads, appending to the file.
    /// `progress(done, total)` is called as images finish. When `stop` is set the workers finish
    /// the image in hand and return: what was cached so far is kept (the file is append-only), and
    /// the caller can tell by `stop` that the cache is incomplete.
    pub fn fill(
        &mut self,
        samples: &[Sample],
        detect: &DetectConfig,
        workers: usize,
        stop: &AtomicBool,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<(), TrainError> {
        let missing: Vec<&Sample> = samples
            .iter()
            .filter(|s| !self.crops.contains_key(&s.content_hash))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let new_file = !self.path.exists();
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| TrainError::Data {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        let out = Mutex::new((BufWriter::new(file), Vec::<(u64, Option<Vec<u8>>)>::new()));
        let io_error = |e: std::io::Error| TrainError::Data {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        if new_file {
            let mut guard = out.lock().map_err(|_| TrainError::Poisoned)?;
            guard.0.write_all(CACHE_MAGIC).map_err(io_error)?;
        }
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let total = missing.len();
        let first_error: Mutex<Option<TrainError>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..workers.max(1) {
                scope.spawn(|| {
                    let mut config = detect.clone();
                    config.threads = 1;
                    let mut detector = match Mtcnn::new(config) {
                        Ok(d) => d,
                        Err(e) => {
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(TrainError::Detect(e.to_string()));
                            }
                            return;
                        }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(sample) = missing.get(i) else { break };
                        let crop = match crop_largest_face(&mut detector, &sample.path, &self.align)
                        {
                            Ok(crop) => crop,
                            Err(e) => {
                                tracing::warn!("{}: {e}", sample.path.display());
                                None
                            }
                        };
                        let Ok(mut guard) = out.lock() else { break };
                        let (writer, list) = &mut *guard;
                        let mut record = sample.content_hash.to_le_bytes().to_vec();
                        record.push(u8::from(crop.is_some()));
                        if let Some(c) = &crop {
                            record.extend_from_slice(c);
                        }
                        if let Err(e) = writer.write_all(&record) {
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(io_error(e));
                            }
                            break;
                        }
                        list.push((sample.content_hash, crop));
                        drop(guard);
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                    }
                });
            }
        });
        let (mut writer, list) = out.into_inner().map_err(|_| TrainError::Poisoned)?;
        writer.flush().map_err(io_error)?;
        self.crops.extend(list);
        match first_error.into_inner().map_err(|_| TrainError::Poisoned)? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Decodes an image, detects faces as `analyze` and `eval` do (still-image retry included, so
/// training sees the faces the runtime sees) and returns the largest one aligned into a
/// `cache_px(input_px)` crop whose centre `input_px` square is exactly the model's aligned crop
/// (`align`: its input size and margin).
pub fn crop_largest_face(
    detector: &mut Mtcnn,
    path: &Path,
    align: &AlignConfig,
) -> Result<Option<Vec<u8>>, String> {
    let image = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let (width, height) = (image.width() as usize, image.height() as usize);
    let faces = detector
        .detect_still(image.as_raw(), width, height)
        .map_err(|e| e.to_string())?;
    let Some(face) = largest_face(&faces) else {
        return Ok(None);
    };
    let Some(model_from_frame) = crate::align::crop_from_frame(&face.landmarks, align) else {
        return Ok(None);
    };
    let border = CACHE_BORDER_PX as f32;
    let cache_from_frame = Similarity {
        tx: model_from_frame.tx + border,
        ty: model_from_frame.ty + border,
        ..model_from_frame
    };
    Ok(warp_rgb(
        image.as_raw(),
        width,
        height,
        &cache_from_frame,
        cache_px(align.crop_px) as usize,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Face;

    fn face(x2: f32, y2: f32) -> Face {
        Face {
            bbox: [0.0, 0.0, x2, y2],
            score: 0.9,
            landmarks: [[0.0; 2]; 5],
        }
    }

    #[test]
    fn the_largest_face_is_chosen() {
        let faces = [face(10.0, 10.0), face(30.0, 5.0), face(12.0, 12.0)];
        assert_eq!(largest_face(&faces).map(|f| f.bbox[2]), Some(30.0));
        assert!(largest_face(&[]).is_none());
    }

    #[test]
    fn cache_reads_back_entries_and_ignores_a_torn_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let detect = DetectConfig::default();
        let align64 = crate::model::spec::model_align(64, INPUT_MARGIN);
        let path = CropCache::open(dir.path(), &detect, &align64)
            .unwrap()
            .path()
            .to_path_buf();
        let mut bytes = CACHE_MAGIC.to_vec();
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.push(1);
        bytes.extend(std::iter::repeat_n(
            9u8,
            (cache_px(64) * cache_px(64) * 3) as usize,
        ));
        bytes.extend_from_slice(&8u64.to_le_bytes());
        bytes.push(0);
        // A run killed mid-write: header of a found crop without its pixels.
        bytes.extend_from_slice(&9u64.to_le_bytes());
        bytes.push(1);
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, bytes).unwrap();
        let cache = CropCache::open(dir.path(), &detect, &align64).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(7).unwrap().as_ref().unwrap()[0], 9);
        assert_eq!(cache.get(8), Some(&None));
        assert!(cache.get(9).is_none());
        std::fs::write(&path, b"something else").unwrap();
        assert!(CropCache::open(dir.path(), &detect, &align64).is_err());
    }
}
