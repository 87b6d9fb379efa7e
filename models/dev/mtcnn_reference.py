#!/usr/bin/env python3
"""Dev-only: reference MTCNN boxes from facenet-pytorch for the parity test (tests/golden/).

Runs facenet-pytorch's MTCNN (defaults: min face 20, thresholds 0.6/0.7/0.7, factor 0.709) on
  - a deterministic sample of ../shared/data/utkface images (decoded with PIL), and
  - frames of ../shared/data/video clips, decoded to RGB by GStreamer exactly as faceflow decodes them
    (decodebin ! videoconvert ! video/x-raw,format=RGB),
and writes tests/golden/mtcnn_reference.json. Images are referred to by path relative to
../shared/data; nothing from shared data is copied.

    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch torchvision pillow numpy
    /tmp/refenv/bin/pip install --no-deps facenet-pytorch==2.6.0
    /tmp/refenv/bin/python models/dev/mtcnn_reference.py
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "tests" / "golden" / "mtcnn_reference.json"
UTK_EVERY = 150  # every 150th file of the sorted list → 139 images
# clip, take every n-th frame
CLIPS = [
    ("video/intel_head-pose-face-detection-male.mp4", 2),
    ("video/intel_face-demographics-walking.mp4", 1),
    ("video/intel_again.mkv", 4),
    ("video/intel_one-by-one-person-detection.mp4", 25),
    ("video/face_recognition_short_hamilton_clip.mp4", 10),
]


def decode_rgb_frames(path):
    # pngenc writes tightly packed rows, so frames come back exactly as faceflow's appsink sees them.
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["gst-launch-1.0", "-q", "filesrc", f"location={path}", "!", "decodebin", "!",
             "videoconvert", "!", "video/x-raw,format=RGB", "!", "pngenc", "compression-level=1", "!",
             "multifilesink", f"location={tmp}/%06d.png"],
            check=True,
        )
        return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(tmp).glob("*.png"))]


def faces_record(mtcnn, rgb):
    boxes, probs, points = mtcnn.detect(rgb, landmarks=True)
    faces = []
    if boxes is not None:
        for b, p, pts in zip(boxes, probs, points):
            faces.append({
                "bbox": [round(float(v), 3) for v in b],
                "score": round(float(p), 6),
                "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in pts],
            })
    return faces


def main():
    torch.set_num_threads(2)
    mtcnn = MTCNN(keep_all=True, device="cpu")
    records = []
    utk = sorted((DATA / "utkface").glob("*.jpg"))[::UTK_EVERY]
    for i, p in enumerate(utk):
        rgb = np.asarray(Image.open(p).convert("RGB"))
        records.append({"image": str(p.relative_to(DATA)), "width": rgb.shape[1],
                        "height": rgb.shape[0], "faces": faces_record(mtcnn, rgb)})
        print(f"\rutkface {i + 1}/{len(utk)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    for clip, every in CLIPS:
        frames = decode_rgb_frames(DATA / clip)
        for idx in range(0, len(frames), every):
            rgb = np.ascontiguousarray(frames[idx])
            records.append({"video": clip, "frame": idx, "width": rgb.shape[1],
                            "height": rgb.shape[0], "faces": faces_record(mtcnn, rgb)})
        print(f"{clip}: {len(frames)} frames, {len(range(0, len(frames), every))} used", file=sys.stderr)
    meta = {
        "generator": "models/dev/mtcnn_reference.py",
        "reference": f"facenet-pytorch 2.6.0 MTCNN defaults, torch {torch.__version__}",
        "records": records,
    }
    OUT.write_text(json.dumps(meta, separators=(",", ":")) + "\n")
    n_faces = sum(len(r["faces"]) for r in records)
    print(f"wrote {OUT} ({len(records)} images/frames, {n_faces} faces)", file=sys.stderr)


if __name__ == "__main__":
    main()
