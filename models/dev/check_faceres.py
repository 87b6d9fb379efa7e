#!/usr/bin/env python3
"""Dev-only: check models/faceres.onnx on labelled UTKFace chips with ONNX Runtime (CPU).

Reads ../shared/data/utkface (file names AGE_GENDER_RACE_*.jpg, gender 0 = male, 1 = female);
copies nothing. Two samples (seed 0): `spread`, 27 chips from each of 11 age bands (0-2, 3-9,
10-19, ..., 80-89, 90+; 297 chips), and `random`, 1,000 chips uniform over the data set (its own
age mix, the one earlier UTKFace numbers were measured on). Each chip is scored with
  - crop `full`: the whole 200x200 chip, or `center80`: its central 160x160 (about faceflow's box
    + 10 % on a chip, whose face fills more of the frame than a detector box does);
  - preprocessing `vggface2`: BGR minus (91.4953, 103.8827, 131.0912) (the one documented for the
    model), `imagenet`: BGR minus (103.939, 116.779, 123.68) (what HSE_FaceRec_tf's own
    facial_analysis.py does), and `rgb-vggface2`: the same mean with the channels left in RGB order
    (a wrong-order control);
and reports gender accuracy (P(male) > 0.5) and age MAE for five read-outs of the 100-way softmax:
argmax, expectation (sum of i * p_i), expectation + 1, median, and HSE's own (1 + the two most
likely indices weighted by their renormalised probabilities), and the mean signed error of the
expectation. Then checks that a batch of 8 equals 8 singles, and
times inference per face with one ONNX Runtime thread (batch 1 and batch 8).

    .cache/faceres-venv/bin/python models/dev/check_faceres.py [--model models/faceres.onnx]
"""
import argparse
import random
import re
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "utkface"
NAME = re.compile(r"^(\d+)_([01])_([0-4])_\d+")
MEANS = {
    "vggface2": (np.array([91.4953, 103.8827, 131.0912], np.float32), True),
    "imagenet": (np.array([103.939, 116.779, 123.68], np.float32), True),
    "rgb-vggface2": (np.array([91.4953, 103.8827, 131.0912], np.float32), False),
}
BANDS = [(0, 2), (3, 9)] + [(a, a + 9) for a in range(10, 90, 10)] + [(90, 200)]
PER_BAND = 27
N_RANDOM = 1000


def labelled_files():
    out = []
    for p in sorted(DATA.iterdir()):
        m = NAME.match(p.name)
        if m:
            out.append((p, int(m.group(1)), int(m.group(2))))
    return out


def samples(files):
    rng = random.Random(0)
    spread = []
    for lo, hi in BANDS:
        band = [f for f in files if lo <= f[1] <= hi]
        spread += rng.sample(band, min(PER_BAND, len(band)))
    rand = rng.sample(files, N_RANDOM)
    return {"spread": spread, "random": rand}


def load(path: Path, crop: str) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    if crop == "center80":
        w, h = img.size
        cw, ch = round(w * 0.8), round(h * 0.8)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
    img = img.resize((224, 224), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)  # RGB, 0..255


def preprocess(rgb: np.ndarray, how: str) -> np.ndarray:
    mean, bgr = MEANS[how]
    x = rgb[..., ::-1] if bgr else rgb
    return np.ascontiguousarray(x - mean, dtype=np.float32)


def age_readouts(p: np.ndarray) -> dict:
    idx = np.arange(p.shape[1], dtype=np.float32)
    top2 = np.argsort(-p, axis=1)[:, :2]
    w = np.take_along_axis(p, top2, axis=1)
    w = w / w.sum(axis=1, keepdims=True)
    return {
        "argmax": p.argmax(axis=1).astype(np.float32),
        "expectation": (p * idx).sum(axis=1),
        "expectation+1": (p * idx).sum(axis=1) + 1,
        "median": (np.cumsum(p, axis=1) < 0.5).sum(axis=1).astype(np.float32),
        "hse(1+top2)": 1 + (top2 * w).sum(axis=1),
    }


READOUTS = ["argmax", "expectation", "expectation+1", "median", "hse(1+top2)"]


def run(sess, x, batch=32):
    outs = [sess.run(["gender", "age", "descriptor"], {"input": x[i:i + batch]})
            for i in range(0, len(x), batch)]
    return [np.concatenate(o) for o in zip(*outs)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "faceres.onnx"))
    ap.add_argument("--reference", help="another ONNX file with the same graph under tf2onnx's "
                    "names (input_1:0 ...), compared output by output")
    args = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    for v in sess.get_inputs() + sess.get_outputs():
        print(f"{v.name}: {v.shape} {v.type}")

    files = labelled_files()
    print(f"{len(files)} labelled chips in {DATA}")
    sets = samples(files)
    for set_name, items in sets.items():
        ages = np.array([a for _, a, _ in items], np.float32)
        male = np.array([g == 0 for _, _, g in items])
        print(f"\n== sample {set_name}: {len(items)} chips, ages {ages.min():.0f}-{ages.max():.0f} "
              f"(mean {ages.mean():.1f}), {male.mean():.0%} male")
        print(f"{'crop':9} {'preprocessing':13} {'gender':>7} "
              + " ".join(f"{k:>14}" for k in READOUTS) + f" {'bias expect.':>14}")
        for crop in ["full", "center80"]:
            rgb = np.stack([load(p, crop) for p, _, _ in items])
            for how in MEANS:
                if how == "rgb-vggface2" and crop != "full":
                    continue
                g, a, _ = run(sess, preprocess(rgb, how))
                acc = float(((g[:, 0] > 0.5) == male).mean())
                r = age_readouts(a)
                maes = [float(np.abs(r[k] - ages).mean()) for k in READOUTS]
                bias = float((r["expectation"] - ages).mean())
                print(f"{crop:9} {how:13} {acc:7.3f} " + " ".join(f"{m:14.2f}" for m in maes)
                      + f" {bias:+14.2f}")

    # batch of 8 against 8 singles, on real faces
    items = sets["spread"][::37][:8]
    x = np.stack([preprocess(load(p, "full"), "vggface2") for p, _, _ in items])
    batched = sess.run(None, {"input": x})
    singles = [sess.run(None, {"input": x[i:i + 1]}) for i in range(8)]
    for k, name in enumerate(["gender", "age", "descriptor"]):
        one = np.concatenate([s[k] for s in singles])
        print(f"batch 8 vs 8 singles, {name}: shape {batched[k].shape}, "
              f"max |difference| {np.abs(batched[k] - one).max():.2e}")

    if args.reference:
        ref = ort.InferenceSession(args.reference, so, providers=["CPUExecutionProvider"])
        names = {"gender": "gender_pred/Sigmoid:0", "age": "age_pred/Softmax:0",
                 "descriptor": "global_pooling/Mean"}
        r = ref.run(list(names.values()), {"input_1:0": x})
        for k, name in enumerate(names):
            print(f"vs reference, {name}: max |difference| {np.abs(batched[k] - r[k]).max():.2e}")

    # one thread, time per face
    for batch in (1, 8, 32):
        xb = np.repeat(x, 4, axis=0)[:batch]
        sess.run(None, {"input": xb})
        best = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(max(1, 16 // batch)):
                sess.run(None, {"input": xb})
            best.append((time.perf_counter() - t) / (max(1, 16 // batch) * batch))
        print(f"1 thread, batch {batch:2}: {min(best) * 1e3:.1f} ms/face (best of 5), "
              f"median {sorted(best)[2] * 1e3:.1f}")


if __name__ == "__main__":
    main()
