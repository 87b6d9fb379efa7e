"""Turns teacher members (train_teachers.py) into one ONNX teacher that `faceflow train --teacher`
and the runtime load: the members' mean probabilities, as logits (log of the mean), behind
faceflow's input contract, with faceflow's model spec in the metadata.

Usage: export_teacher.py OUT.onnx MEMBER.pt [MEMBER.pt ...]
"""

import json
import sys
from pathlib import Path

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from train_teachers import Teacher  # noqa: E402

GENDER = ["male", "female"]
RACE = ["white", "black", "asian", "indian", "others"]


class Ensemble(nn.Module):
    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, crop):
        outs = [m(crop) for m in self.members]
        return tuple(
            torch.log(sum(F.softmax(o[k], 1) for o in outs) / len(outs)).clamp(min=-60.0) for k in range(3)
        )


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    members, results, meta = [], [], None
    for path in sys.argv[2:]:
        saved = torch.load(path, map_location="cpu")
        m = Teacher()
        m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["state"].items()})
        members.append(m.eval())
        results.append(saved["result"])
        if meta is None:
            meta = saved["meta"]
        elif saved["meta"] != meta:
            sys.exit(f"{path}: trained on other crops than {sys.argv[2]}")
    # Older members recorded the slice as a list of one interval.
    held = [r.get("also_held_out") for r in results]
    held = [h[0] if h and isinstance(h[0], list) else (h or None) for h in held]
    splits = {(r["split"], json.dumps(h)) for r, h in zip(results, held)}
    if len(splits) != 1:
        sys.exit("members learned different faces: export each fold of a cross-fitted set on its own")
    split, held_out = splits.pop()
    held_out = json.loads(held_out)
    px = meta["input_px"]
    model = Ensemble(members).eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, px, px),),
        str(out),
        input_names=["crop"],
        output_names=["age_logits", "gender_logits", "race_logits"],
        dynamic_axes={n: {0: "batch"} for n in ["crop", "age_logits", "gender_logits", "race_logits"]},
        opset_version=18,
        dynamo=False,
    )
    proto = onnx.load(str(out))
    spec = {
        "spec_version": 1,
        "input": {
            "name": "crop", "layout": "NCHW-RGB", "size_px": px, "template": "faceflow-5pt-v1",
            "margin": meta["margin"], "mean": [127.5] * 3, "std": [64.0] * 3,
        },
        "outputs": {
            "age": "age_logits", "age_min_years": 1, "age_max_years": 80,
            "gender": "gender_logits", "gender_labels": GENDER,
            "race": "race_logits", "race_labels": RACE,
        },
        "tasks": ["age", "gender", "race"],
        "training": {
            "description": "teacher: ensemble of {} residual CNNs ({} parameters each) trained on a GPU by "
            "models/teacher/train_teachers.py, {} epochs each".format(
                len(members), results[0]["params"], "/".join(str(r["epochs"]) for r in results)
            ),
            "epochs": round(results[0]["epochs"]),
            "images": results[0]["training_faces"],
            "split": {
                "seed": meta["seed"],
                "val_fraction": meta["val_fraction"] if split == "train" else 0.0,
                **({"also_held_out": held_out} if held_out else {}),
            },
        },
    }
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "faceflow.spec", json.dumps(spec)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    print(f"{out}: {len(members)} members, split {split}, {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
