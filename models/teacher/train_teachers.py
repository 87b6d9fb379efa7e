"""Trains teacher models for `faceflow train --teacher` on a GPU: residual CNNs, far larger and
trained far longer than the shipped model can afford, on the crops of export_crops.py. Each run
trains one member for a fixed wall-clock budget (the learning rate follows a cosine over the
budget, so a run always ends annealed) and saves its weights; export_teacher.py turns members
into one ONNX teacher with faceflow's spec.

Usage: train_teachers.py DATA_DIR OUT.pt --split {train,all} --seed N --budget-s S
                         [--fold K --folds N] [--report R.json]

`--split train` learns only the trainer's training part (and reports on its validation part);
`--split all` learns every face. `--fold K --folds N` also holds out the K-th (1-based) of N equal
slices of the split's unit interval above the validation part: a cross-fitted set of N members
where each face of the training part has one member that never saw it (the trainer, reading the
held-out slice from the spec, takes each face's targets from the members that did not learn it).
"""

import argparse
import io
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import GROUPS, split_unit  # noqa: E402

AGE_BINS = 80  # one per year, 1..80; the last also holds older faces
MEAN, STD = 127.5, 64.0  # src/model/spec.rs INPUT_MEAN / INPUT_STD


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class Teacher(nn.Module):
    """80 px in; maps 80 -> 40 -> 20 -> 10 -> 5; three heads of logits."""

    def __init__(self, widths=(64, 128, 192, 256), blocks=(2, 2, 2, 1), dropout=0.2):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 48, 3, 2, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(inplace=True),
        )
        layers, cin = [], 48
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(Block(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.age = nn.Linear(cin, AGE_BINS)
        self.gender = nn.Linear(cin, 2)
        self.race = nn.Linear(cin, 5)

    def forward(self, x):
        f = self.drop(self.body(self.stem(x)).mean((2, 3)))
        return self.age(f), self.gender(f), self.race(f)


def load(data_dir, limit=0):
    meta = json.loads((Path(data_dir) / "index.json").read_text())
    blob = (Path(data_dir) / "crops.bin").read_bytes()
    faces = meta["faces"][:limit] if limit else meta["faces"]

    def decode(f):
        return np.asarray(Image.open(io.BytesIO(blob[f["offset"] : f["offset"] + f["length"]])).convert("RGB"))

    with ThreadPoolExecutor(16) as pool:
        images = np.stack(list(pool.map(decode, faces)))
    labels = np.array([[f["age"], f["gender"], f["race"]] for f in faces], np.int64)
    val = np.array([f["val"] for f in faces], bool)
    unit = np.array([split_unit(int(f["hash"], 16), meta["seed"]) for f in faces])
    return meta, images, labels, val, unit


def fold_interval(fold, folds, val_fraction):
    """[from, to) of the split's unit held out by member `fold` (1-based) of `folds`."""
    width = (1.0 - val_fraction) / folds
    lo = val_fraction + (fold - 1) * width
    return [lo, 1.0 if fold == folds else val_fraction + fold * width]


def age_distribution(ages):
    """src/train/losses.rs::age_distribution, batched."""
    centre = (ages.clamp(max=AGE_BINS) - 1).float()[:, None]
    sigma = (0.07 * ages.float()).clamp(min=1.0)[:, None]
    bins = torch.arange(AGE_BINS, device=ages.device).float()[None]
    d = torch.exp(-0.5 * ((bins - centre) / sigma) ** 2)
    return d / d.sum(1, keepdim=True)


def smoothed(classes, n, eps=0.05):
    return F.one_hot(classes, n).float() * (1 - eps) + eps / n


def augment(batch_u8, side, out_px, gen):
    """Random flip, scale, shift and rotation (as the detector's jitter gives them) and colour, on the GPU."""
    n = batch_u8.shape[0]
    dev = batch_u8.device
    x = batch_u8.permute(0, 3, 1, 2).float()
    scale = torch.empty(n, device=dev).uniform_(0.9, 1.1, generator=gen)
    angle = torch.empty(n, device=dev).uniform_(-0.17, 0.17, generator=gen)
    shift = torch.empty(n, 2, device=dev).uniform_(-4, 4, generator=gen) * 2 / side
    flip = (torch.rand(n, device=dev, generator=gen) < 0.5).float() * 2 - 1
    s = scale * out_px / side
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, (n, 3, out_px, out_px), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Brightness, contrast, saturation.
    b = torch.empty(n, 1, 1, 1, device=dev).uniform_(-25, 25, generator=gen)
    c = torch.empty(n, 1, 1, 1, device=dev).uniform_(0.75, 1.25, generator=gen)
    sat = torch.empty(n, 1, 1, 1, device=dev).uniform_(0.75, 1.25, generator=gen)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * sat
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean + b
    return ((x.clamp(0, 255) - MEAN) / STD).contiguous(memory_format=torch.channels_last)


def centre(batch_u8, border, out_px):
    x = batch_u8[:, border : border + out_px, border : border + out_px].permute(0, 3, 1, 2).float()
    return ((x - MEAN) / STD).contiguous(memory_format=torch.channels_last)


def groups(ages, n):
    return torch.bucketize(ages, torch.tensor(GROUPS[n], device=ages.device), right=False)


@torch.no_grad()
def evaluate(model, images, labels, border, out_px):
    """Centre crops, mirror averaged as faceflow does (the logits); age as the distribution's median."""
    model.eval()
    probs = [[], [], []]
    for i in range(0, len(images), 1024):
        x = centre(images[i : i + 1024], border, out_px)
        with torch.autocast("cuda", torch.bfloat16, enabled=x.is_cuda):
            outs = [model(x), model(torch.flip(x, dims=[3]))]
        for k in range(3):
            probs[k].append(F.softmax((outs[0][k].float() + outs[1][k].float()) / 2, 1))
    age_p, gender_p, race_p = (torch.cat(p) for p in probs)
    cdf = age_p.cumsum(1)
    median = (cdf < 0.5).sum(1) + 1
    mean = (age_p * torch.arange(1, AGE_BINS + 1, device=age_p.device)).sum(1)
    # Age is scored on faces aged 1-80, as `faceflow eval` scores it.
    aged = labels[:, 0] <= AGE_BINS
    ages, median, mean = labels[aged, 0], median[aged], mean[aged]
    out = {f"age{n}": (groups(median, n) == groups(ages, n)).float().mean().item() for n in GROUPS}
    out["mae_median"] = (median - ages).abs().float().mean().item()
    out["mae_mean"] = (mean - ages.float()).abs().mean().item()
    out["gender"] = (gender_p.argmax(1) == labels[:, 1]).float().mean().item()
    out["race"] = (race_p.argmax(1) == labels[:, 2]).float().mean().item()
    model.train()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--split", choices=["train", "all"], required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (testing)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N faces (testing)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--folds", type=int, default=0)
    p.add_argument("--report", type=Path)
    a = p.parse_args()
    started = time.time()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(a.seed)
    torch.backends.cudnn.benchmark = True
    if (a.fold > 0) != (a.folds > 0) or not 0 <= a.fold <= a.folds:
        sys.exit("--fold K needs --folds N, 1 <= K <= N")
    meta, images, labels, val, unit = load(a.data, a.limit)
    border, side, out_px = meta["border"], meta["side"], meta["input_px"]
    learn = ~val if a.split == "train" else np.ones_like(val)
    held_out = None
    if a.folds:
        held_out = fold_interval(a.fold, a.folds, meta["val_fraction"] if a.split == "train" else 0.0)
        learn &= ~((unit >= held_out[0]) & (unit < held_out[1]))
    train_idx = np.nonzero(learn)[0]
    images_d = torch.from_numpy(images).to(dev)
    labels_d = torch.from_numpy(labels).to(dev)
    tr_x, tr_y = images_d[train_idx], labels_d[train_idx]
    va_x, va_y = images_d[torch.from_numpy(np.nonzero(val)[0]).to(dev)], labels_d[torch.from_numpy(np.nonzero(val)[0]).to(dev)]
    print(f"[{a.out.name}] {len(tr_x)} training faces, {len(va_x)} validation, loaded in {time.time() - started:.1f} s on {dev}", flush=True)
    model = Teacher().to(dev).to(memory_format=torch.channels_last)
    params = sum(q.numel() for q in model.parameters())
    decay = [q for n_, q in model.named_parameters() if q.ndim > 1]
    no_decay = [q for n_, q in model.named_parameters() if q.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=a.lr, momentum=0.9, nesterov=True,
    )
    gen = torch.Generator(device=dev)
    gen.manual_seed(a.seed)
    t0 = time.time()
    step, seen, epoch, history = 0, 0, 0, []
    perm = torch.randperm(len(tr_x), device=dev, generator=gen)
    at = 0
    while True:
        frac = (time.time() - t0) / a.budget_s
        if frac >= 1 or (a.max_steps and step >= a.max_steps):
            break
        lr = a.lr * (frac / 0.03 if frac < 0.03 else 0.5 * (1 + math.cos(math.pi * (frac - 0.03) / 0.97)))
        for g in opt.param_groups:
            g["lr"] = lr
        if at + a.batch > len(perm):
            perm, at, epoch = torch.randperm(len(tr_x), device=dev, generator=gen), 0, epoch + 1
            if epoch % 10 == 0:
                line = {"epoch": epoch, "seconds": round(time.time() - t0, 1), "lr": round(lr, 4)}
                if a.split == "train":
                    line.update(evaluate(model, va_x, va_y, border, out_px))
                history.append(line)
                print(f"[{a.out.name}] {json.dumps(line)}", flush=True)
        idx = perm[at : at + a.batch]
        at += a.batch
        x = augment(tr_x[idx], side, out_px, gen)
        y = tr_y[idx]
        with torch.autocast("cuda", torch.bfloat16, enabled=dev.type == "cuda"):
            age, gender, race = model(x)
        loss = (
            -(F.log_softmax(age.float(), 1) * age_distribution(y[:, 0])).sum(1).mean()
            - (F.log_softmax(gender.float(), 1) * smoothed(y[:, 1], 2)).sum(1).mean()
            - (F.log_softmax(race.float(), 1) * smoothed(y[:, 2], 5)).sum(1).mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += len(idx)
    train_s = time.time() - t0
    result = {
        "member": a.out.name, "split": a.split, "also_held_out": held_out, "seed": a.seed, "params": params, "steps": step,
        "epochs": round(seen / len(tr_x), 2), "train_seconds": round(train_s, 1),
        "images_per_s": round(seen / max(train_s, 1e-9)), "training_faces": len(tr_x), "history": history,
    }
    if a.split == "train":
        result["validation"] = evaluate(model, va_x, va_y, border, out_px)
    # Half-precision weights keep a member small enough to come back from the GPU machine.
    state = {k: (v.half() if v.is_floating_point() and "running" not in k else v).cpu() for k, v in model.state_dict().items()}
    torch.save({"state": state, "meta": {k: meta[k] for k in meta if k != "faces"}, "result": result}, a.out)
    print(f"[{a.out.name}] {json.dumps(result)}", flush=True)
    if a.report:
        a.report.write_text(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
