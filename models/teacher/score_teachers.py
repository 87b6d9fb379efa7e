"""Scores teachers, alone and averaged, as `faceflow train` would hear them: each faceflow
attribute model (ONNX) on the trainer's validation crops packed by export_crops.py (centre crop,
or the wider window of a model aligned with a larger margin, resampled to its input), mirror
averaged (logits, as faceflow does); then the mean of all their probabilities, as the trainer blends several teachers.
Age is read as the median of the distribution and scored on faces aged 1-80. A quick way to judge a set of teachers before a
30-epoch run; the window is resampled with PIL rather than faceflow's warp and the crops passed
through JPEG, so the numbers sit near, not on, `faceflow eval`'s.

Usage: score_teachers.py DATA_DIR MODEL.onnx [MODEL.onnx ...]
"""

import io
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

GROUPS = {3: [26, 52], 5: [11, 23, 39, 55], 10: [8, 16, 24, 32, 40, 48, 56, 64, 72]}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    data = Path(sys.argv[1])
    meta = json.loads((data / "index.json").read_text())
    blob = (data / "crops.bin").read_bytes()
    faces = [f for f in meta["faces"] if f["val"]]
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(blob[f["offset"] : f["offset"] + f["length"]])).convert("RGB")) for f in faces]
    )
    labels = np.array([[f["age"], f["gender"], f["race"]] for f in faces])
    px, margin, side = meta["input_px"], meta["margin"], meta["side"]

    def view(model_px, model_margin):
        window = px * (1 + 2 * model_margin) / (1 + 2 * margin)
        if window > side:
            sys.exit(f"a model with margin {model_margin} needs {window:.0f} px; the crops hold {side}")
        lo = (side - window) / 2
        return np.stack(
            [
                np.asarray(Image.fromarray(im).resize((model_px, model_px), Image.BILINEAR, box=(lo, lo, lo + window, lo + window)))
                for im in images
            ]
        )

    def predict(path):
        spec = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["faceflow.spec"])
        x = ((view(spec["input"]["size_px"], spec["input"]["margin"]).astype(np.float32) - 127.5) / 64).transpose(0, 3, 1, 2)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        # As faceflow's AttributeModel::predict: the mirror's logits averaged in, then softmax.
        logits = [0.0, 0.0, 0.0]
        for xx in (x, np.ascontiguousarray(x[:, :, :, ::-1])):
            outs = [session.run(None, {"crop": xx[i : i + 256]}) for i in range(0, len(xx), 256)]
            for k in range(3):
                logits[k] = logits[k] + np.concatenate([o[k] for o in outs]) / 2
        probs = []
        for z in logits:
            z = np.exp(z - z.max(1, keepdims=True))
            probs.append(z / z.sum(1, keepdims=True))
        return probs

    def score(probs, name):
        age, gender, race = probs
        # Age is scored on faces aged 1-80, as `faceflow eval` scores it.
        aged = labels[:, 0] <= 80
        median = ((np.cumsum(age, 1) < 0.5).sum(1) + 1)[aged]
        truth = labels[aged, 0]
        cells = [f"{(np.searchsorted(GROUPS[n], median) == np.searchsorted(GROUPS[n], truth)).mean():.3f}" for n in GROUPS]
        cells.append(f"{np.abs(median - truth).mean():.2f}")
        cells.append(f"{(gender.argmax(1) == labels[:, 1]).mean():.3f}")
        cells.append(f"{(race.argmax(1) == labels[:, 2]).mean():.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    print(f"{len(faces)} validation faces\n\n| teacher | age 3 | age 5 | age 10 | MAE | gender | race |\n|---|---|---|---|---|---|---|")
    all_probs = []
    for path in sys.argv[2:]:
        all_probs.append(predict(path))
        score(all_probs[-1], Path(path).name)
    if len(all_probs) > 1:
        score([sum(p[k] for p in all_probs) / len(all_probs) for k in range(3)], "mean of all")


if __name__ == "__main__":
    main()
