#!/usr/bin/env python3
"""Fits faceres's race head: a softmax regression on faceres's 1,024-d face descriptor, trained on
UTKFace faces as faceflow reads them, written as models/faceres.race.json (beside faceres.onnx,
where faceflow finds it).

Why: faceres (HSE_FaceRec_tf, trained on faces in the wild) reads no race; the attribute model
does, but learned only UTKFace's well-lit frontal chips. A linear head on faceres's descriptor
borrows its robustness on video faces; faceflow averages the two race readings as it does gender.

The descriptors come from `faceflow eval --descriptors` (one JSON line per face: labels and the
unit-length descriptor):

    target/release/faceflow eval --source ../shared/data/utkface --split training \\
        --model models/teachers/v10.onnx --flip-average false --faceres true \\
        --descriptors runs/desc-train.jsonl --report runs/desc-train
    (the same with --split validation into runs/desc-val.jsonl)
    models/faceres_race.py --train runs/desc-train.jsonl --val runs/desc-val.jsonl
    models/faceres_race.py --train runs/desc-train.jsonl --l2 L --out models/faceres.race.json

The shipped head is fitted on the training faces only, so the validation split stays unseen and
the calibration fitted there stays honest. With --val, each strength of L2 regularisation in --l2
is scored on the validation faces and the best is named (and written, with --out). With --out
alone, the head fitted on every --train file with the single --l2 given is written. A fixed number
of gradient steps (--steps) from zero: at the weakest strengths the steps, not the L2 term, end
the fit (early stopping), so the strengths and steps are chosen together on validation.
Needs numpy only.
"""

import argparse
import json
import sys

import numpy as np

RACES = ["white", "black", "asian", "indian", "others"]


def load(paths):
    xs, ys = [], []
    for path in paths:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("race") not in RACES:
                    continue
                xs.append(r["descriptor"])
                ys.append(RACES.index(r["race"]))
    if not xs:
        sys.exit(f"error: no labelled descriptors in {', '.join(paths)}")
    return np.asarray(xs, dtype=np.float64), np.asarray(ys)


def fit(x, y, l2, steps=3000):
    """Softmax regression by full-batch gradient descent with Nesterov momentum from zero, for a
    fixed number of steps (a convex problem; at weak L2 the steps end the fit before its optimum)."""
    n, d = x.shape
    k = len(RACES)
    onehot = np.eye(k)[y]
    # The last row is the bias (a column of ones in xb), left out of the L2 term.
    w = np.zeros((d + 1, k))
    xb = np.hstack([x, np.ones((n, 1))])
    velocity = np.zeros_like(w)
    # A step of 1/L for the loss's curvature bound L (||[x, 1]||² = 2, softmax Hessian ≤ 1/2).
    lr = 1.0 / (1.0 + l2)
    for _ in range(steps):
        ahead = w + 0.9 * velocity
        logits = xb @ ahead
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        grad = xb.T @ (p - onehot) / n
        grad[:-1] += l2 * ahead[:-1]
        velocity = 0.9 * velocity - lr * grad
        w += velocity
    return w


def probabilities(w, x):
    logits = np.hstack([x, np.ones((len(x), 1))]) @ w
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--val")
    ap.add_argument("--l2", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3])
    ap.add_argument("--steps", type=int, default=3000, help="gradient steps per fit")
    ap.add_argument("--out")
    ap.add_argument("--fitted-on", help="what the training faces are, for the head's record")
    a = ap.parse_args()
    x, y = load(a.train)
    print(f"{len(y)} training faces", file=sys.stderr)
    if a.val:
        xv, yv = load([a.val])
        best = None
        for l2 in a.l2:
            w = fit(x, y, l2, a.steps)
            p = probabilities(w, xv)
            acc = float((p.argmax(1) == yv).mean())
            nll = float(-np.log(p[np.arange(len(yv)), yv] + 1e-12).mean())
            print(f"l2 {l2:g}: validation accuracy {acc:.4f}, log loss {nll:.4f} ({len(yv)} faces)")
            if best is None or acc > best[0]:
                best = (acc, l2)
        print(f"best l2 {best[1]:g} ({best[0]:.4f})")
    if a.out:
        if a.val:
            l2 = best[1]
        elif len(a.l2) == 1:
            l2 = a.l2[0]
        else:
            sys.exit("error: --out without --val takes one --l2")
        w = fit(x, y, l2, a.steps)
        head = {
            "what": "faceres race head: softmax(weights · descriptor + bias), descriptor unit length",
            "classes": RACES,
            "fitted_on": f"{len(y)} faces: {a.fitted_on or ', '.join(a.train)}; l2 {l2:g}, "
            f"{a.steps} steps",
            "weights": [[round(float(v), 7) for v in w[:-1, c]] for c in range(len(RACES))],
            "bias": [round(float(v), 7) for v in w[-1]],
        }
        with open(a.out, "w") as f:
            json.dump(head, f)
            f.write("\n")
        print(f"head written to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
