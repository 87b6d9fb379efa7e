"""Scores teachers, alone and averaged, as `faceflow train` would hear them: each faceflow
attribute model (ONNX) on the trainer's validation crops packed by export_crops.py (centre crop,
or the wider window of a model aligned with a larger margin, resampled to its input), mirror
averaged (logits, as faceflow does); then the mean of all their probabilities, as the trainer blends several teachers.
Age is read as the median of the distribution and scored on faces aged 1-80. A quick way to judge a set of teachers before a
30-epoch run; the window is resampled with PIL rather than faceflow's warp and the crops passed
through JPEG, so the numbers sit near, not on, `faceflow eval`'s.

Usage: score_teachers.py DATA_DIR MODEL.onnx [MODEL.onnx ...] [--part training] [--max-faces N]

`--part training` scores the training faces instead (what the teachers tell the student there: a
teacher that has learned them by heart says little more than the labels); `--max-faces N` takes
every k-th face for about N.
"""

import io
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import GROUPS, split_unit  # noqa: E402


def main():
    args, part, max_faces = sys.argv[1:], "validation", 0
    while len(args) >= 2 and args[-2] in ("--part", "--max-faces"):
        if args[-2] == "--part":
            part = args[-1]
        else:
            max_faces = int(args[-1])
        args = args[:-2]
    if len(args) < 2 or part not in ("validation", "training"):
        sys.exit(__doc__)
    data = Path(args[0])
    meta = json.loads((data / "index.json").read_text())
    blob = (data / "crops.bin").read_bytes()
    faces = [f for f in meta["faces"] if f["val"] == (part == "validation")]
    if max_faces and len(faces) > max_faces:
        faces = faces[:: -(-len(faces) // max_faces)]
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(blob[f["offset"] : f["offset"] + f["length"]])).convert("RGB")) for f in faces]
    )
    all_labels = np.array([[f["age"], f["gender"], f["race"]] for f in faces])
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

    def speaks(split):
        """src/model/spec.rs TrainingSplit::held_out: one fold of a cross-fitted set speaks only
        for the faces it never learned (src/train/distill.rs); any other teacher for all."""
        if not split or not split.get("also_held_out"):
            return np.ones(len(faces), bool)
        lo, hi = split["also_held_out"]
        unit = np.array([split_unit(int(f["hash"], 16), split["seed"]) for f in faces])
        return (unit < split["val_fraction"]) | ((unit >= lo) & (unit < hi))

    def predict(path):
        spec = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["faceflow.spec"])
        mask = speaks(spec.get("training", {}).get("split"))
        x = ((view(spec["input"]["size_px"], spec["input"]["margin"]).astype(np.float32) - 127.5) / 64).transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x[mask])
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
        return probs, mask

    def score(probs, name, mask):
        age, gender, race = probs
        labels = all_labels[mask]
        # Age is scored on faces aged 1-80, as `faceflow eval` scores it.
        aged = labels[:, 0] <= 80
        median = ((np.cumsum(age, 1) < 0.5).sum(1) + 1)[aged]
        truth = labels[aged, 0]
        cells = [f"{(np.searchsorted(GROUPS[n], median) == np.searchsorted(GROUPS[n], truth)).mean():.3f}" for n in GROUPS]
        cells.append(f"{np.abs(median - truth).mean():.2f}")
        cells.append(f"{(gender.argmax(1) == labels[:, 1]).mean():.3f}")
        cells.append(f"{(race.argmax(1) == labels[:, 2]).mean():.3f}")
        print(f"| {name} ({mask.sum()} faces) | " + " | ".join(cells) + " |", flush=True)

    print(f"{len(faces)} {part} faces\n\n| teacher | age 3 | age 5 | age 10 | MAE | gender | race |\n|---|---|---|---|---|---|---|")
    sums = [np.zeros((len(faces), n)) for n in (80, 2, 5)]
    count = np.zeros(len(faces))
    for path in args[1:]:
        probs, mask = predict(path)
        score(probs, Path(path).name, mask)
        for k in range(3):
            sums[k][mask] += probs[k]
        count += mask
    if len(args) > 2:
        # Per face, the mean over the teachers that speak for it.
        some = count > 0
        score([sums[k][some] / count[some, None] for k in range(3)], "mean of all", some)


if __name__ == "__main__":
    main()
