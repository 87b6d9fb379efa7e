"""Packs the trainer's aligned face crops (faceflow's own detector and alignment, read from its crop
cache) with their UTKFace labels and the trainer's validation split into one small file set, so a
GPU machine can train teacher models on exactly the crops `faceflow train` distils from.

Usage: export_crops.py UTKFACE_DIR CACHE_DIR OUT_DIR [--input-px 80] [--margin 0.15] [--border 8]
                       [--seed 42] [--val-fraction 0.15] [--quality 92]

CACHE_DIR is the trainer's `--cache` folder (.cache/crops by default); the file for this input
size and margin (with the detector's default settings) is found by the name the trainer gives it.
Writes OUT_DIR/crops.bin (JPEG images, (input_px + 2 border) px square, centred on the model's
crop) and OUT_DIR/index.json (per face: offset, length, age, gender, race, val).
"""

import argparse
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import xxhash
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import split_unit  # noqa: E402

CONTENT_SEED = 0x6661_6365_666C_6F77
CACHE_MAGIC = b"FFCROP01"
CACHE_BORDER_PX = 12
DEFAULT_MARGIN = 0.25  # src/model/spec.rs INPUT_MARGIN: caches at this margin carry no margin in their key
# src/detect/mod.rs defaults, as the trainer writes them into the cache key.
DETECTOR_KEY = "20-[0.6, 0.7, 0.7]-0.709"
IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "bmp", "webp"}


def is_validation(content_hash, seed, val_fraction):
    """src/model/dataset.rs::is_validation."""
    return split_unit(content_hash, seed) < val_fraction


def parse_name(name):
    """src/model/mod.rs::parse_utkface_name: (age, gender, race) or None."""
    fields = name.split("_")
    if len(fields) < 4 or not all(re.fullmatch(r"[0-9]+", f) for f in fields[:3]):
        return None
    age, gender, race = (int(f) for f in fields[:3])
    if not (1 <= age <= 120) or gender > 1 or race > 4:
        return None
    return age, gender, race


def scan(folder):
    """src/model/dataset.rs::scan for one folder: one sample per distinct content, copies with
    conflicting labels dropped."""
    by_hash = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        sys.exit(f"{folder}: {e.strerror}")
    for name in names:
        if name.rsplit(".", 1)[-1].lower() not in IMAGE_EXTENSIONS:
            continue
        labels = parse_name(name)
        if labels is None:
            continue
        try:
            data = (folder / name).read_bytes()
        except OSError:
            continue  # the trainer reports and skips unreadable files too
        by_hash.setdefault(xxhash.xxh64_intdigest(data, CONTENT_SEED), []).append(labels)
    samples = []
    for h in sorted(by_hash):
        copies = by_hash[h]
        if any(c != copies[0] for c in copies[1:]):
            continue
        samples.append((h, copies[0]))
    return samples


def cache_path(cache_dir, input_px, margin):
    """src/train/data.rs CropCache::open: one file per detector setting and crop geometry."""
    cache_px = input_px + 2 * CACHE_BORDER_PX
    key = f"{DETECTOR_KEY}-{cache_px}-{input_px}-still"
    if margin != DEFAULT_MARGIN:
        # Rust prints an f32 the shortest way that reads back: 0.15, 0.4.
        key += f"-margin{margin:g}"
    return Path(cache_dir) / f"crops-{xxhash.xxh64_intdigest(key.encode(), CONTENT_SEED):016x}.bin"


def read_cache(path, cache_px):
    crop_bytes = cache_px * cache_px * 3
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        sys.exit(f"{path}: {e.strerror} (run `faceflow train` with this --input-px and --margin first)")
    if data[:8] != CACHE_MAGIC:
        sys.exit(f"{path}: not a faceflow crop cache")
    crops, at = {}, 8
    while at + 9 <= len(data):
        h = int.from_bytes(data[at : at + 8], "little")
        found = data[at + 8] == 1
        at += 9
        if found:
            if at + crop_bytes > len(data):
                break
            crops[h] = data[at : at + crop_bytes]
            at += crop_bytes
        else:
            crops[h] = None
    return crops


def main():
    p = argparse.ArgumentParser()
    p.add_argument("utkface", type=Path)
    p.add_argument("cache", type=Path, help="the trainer's crop cache folder")
    p.add_argument("out", type=Path)
    p.add_argument("--input-px", type=int, default=80)
    p.add_argument("--margin", type=float, default=0.15)
    p.add_argument("--border", type=int, default=8)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--quality", type=int, default=92)
    a = p.parse_args()
    if not 0 <= a.border <= CACHE_BORDER_PX:
        sys.exit(f"--border must be 0..{CACHE_BORDER_PX}")
    cache_px = a.input_px + 2 * CACHE_BORDER_PX
    crops = read_cache(cache_path(a.cache, a.input_px, a.margin), cache_px)
    samples = scan(a.utkface)
    if not samples:
        sys.exit(f"{a.utkface}: no labelled images (UTKFace names AGE_GENDER_RACE_*.jpg)")
    missing = sum(h not in crops for h, _ in samples)
    if missing:
        sys.exit(f"{missing} images are not in the crop cache: run `faceflow train` on this folder first")
    a.out.mkdir(parents=True, exist_ok=True)
    side = a.input_px + 2 * a.border
    cut = CACHE_BORDER_PX - a.border
    index, no_face = [], 0
    # Written under temporary names and renamed at the end: never a crops.bin beside another index.
    blob_tmp, index_tmp = a.out / "crops.bin.partial", a.out / "index.json.partial"
    with open(blob_tmp, "wb") as blob:
        offset = 0
        for h, (age, gender, race) in samples:
            crop = crops[h]
            if crop is None:
                no_face += 1
                continue
            rgb = np.frombuffer(crop, np.uint8).reshape(cache_px, cache_px, 3)
            buf = io.BytesIO()
            Image.fromarray(rgb[cut : cut + side, cut : cut + side]).save(
                buf, "JPEG", quality=a.quality
            )
            jpeg = buf.getvalue()
            blob.write(jpeg)
            index.append(
                {
                    "hash": f"{h:016x}",
                    "offset": offset,
                    "length": len(jpeg),
                    "age": age,
                    "gender": gender,
                    "race": race,
                    "val": is_validation(h, a.seed, a.val_fraction),
                }
            )
            offset += len(jpeg)
    meta = {
        "input_px": a.input_px,
        "margin": a.margin,
        "border": a.border,
        "side": side,
        "seed": a.seed,
        "val_fraction": a.val_fraction,
        "faces": index,
    }
    index_tmp.write_text(json.dumps(meta))
    blob_tmp.replace(a.out / "crops.bin")
    index_tmp.replace(a.out / "index.json")
    val = sum(f["val"] for f in index)
    print(f"{len(index)} faces ({len(index) - val} training, {val} validation), {no_face} without a face, "
          f"{offset / 1e6:.1f} MB of {side} px JPEG (q{a.quality})")


if __name__ == "__main__":
    main()
