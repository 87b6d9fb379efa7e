#!/usr/bin/env python3
"""Dev-only: an int8 copy of the attribute model (models/faceattr.onnx), for measuring what it
gains and loses before it is shipped. Not used by faceflow unless given with --model.

ONNX Runtime's static quantization, QDQ format, per-tensor (the per-channel path of onnxruntime
1.31.1 and 1.32.0 fails in `_adjust_weight_scale_for_int32_bias`, "truth value of an array ...
ambiguous"; switching that adjustment off runs, but reads ages badly), weights int8, activations
uint8. The first convolution and the three heads stay float: quantized too, the model read some
dim faces of real footage 20 to 37 years older than the float model does (the yardstick's
Hamilton clip), though UTKFace did not change.

Activation ranges are calibrated on 640 UTKFace chips (seed 1), each the central 76 % of the chip
resized to the model's input (close to, not exactly, faceflow's five-point alignment; only the
ranges depend on it), half of them dimmed, flattened and tinted as poorly lit video faces are.
The spec (`faceflow.spec` metadata) is copied from the float model, so faceflow reads the copy as
it reads the original; copy models/faceattr.calibration.json beside the output
(`<name>.calibration.json`) to keep the float model's temperatures.

Prints the cost per face on one ONNX Runtime thread (batch 1, 4, 32) for both models, and how
often their argmax agrees on 32 chips.

    python3 -m venv .cache/quant-venv
    .cache/quant-venv/bin/pip install onnxruntime onnx numpy pillow sympy
    .cache/quant-venv/bin/python models/dev/quantize_faceattr.py [--out /tmp/faceattr-int8.onnx]

Measured 2026-12-08: docs/performance.md, "Settings that trade speed for accuracy".
"""
import argparse
import glob
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CALIBRATION_CHIPS = 640
BATCH = 16


def chip(path, side, rng):
    """One UTKFace chip as the model's input (NCHW, (pixel - 127.5) / 64); dimmed, flattened and
    tinted half the time."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    im = im.crop((int(w * 0.12), int(h * 0.12), int(w * 0.88), int(h * 0.88)))
    a = np.asarray(im.resize((side, side), Image.BILINEAR), dtype=np.float32)
    if rng.random() < 0.5:
        gain, contrast = rng.uniform(0.25, 0.7), rng.uniform(0.5, 1.0)
        tint = np.array([rng.uniform(0.8, 1.2) for _ in range(3)], dtype=np.float32)
        a = np.clip(((a - a.mean()) * contrast + a.mean()) * gain * tint, 0, 255)
    return ((a - 127.5) / 64).transpose(2, 0, 1)


class Chips(CalibrationDataReader):
    def __init__(self, files, side, input_name):
        rng = random.Random(1)
        self.batches = iter(
            {input_name: np.stack([chip(f, side, rng) for f in files[i : i + BATCH]])}
            for i in range(0, CALIBRATION_CHIPS, BATCH)
        )

    def get_next(self):
        return next(self.batches, None)


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=ROOT / "models/faceattr.onnx", type=Path)
    parser.add_argument("--utkface", default=ROOT.parent / "shared/data/utkface", type=Path)
    parser.add_argument("--out", default=Path("/tmp/faceattr-int8.onnx"), type=Path)
    args = parser.parse_args()

    files = sorted(glob.glob(str(args.utkface / "*.jpg")))
    if len(files) < CALIBRATION_CHIPS + 1100:
        raise SystemExit(f"error: {args.utkface}: too few UTKFace chips ({len(files)})")
    random.Random(1).shuffle(files)
    original = onnx.load(str(args.model))
    input_name = original.graph.input[0].name
    side = original.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(args.model), str(prepared))
        nodes = [n for n in onnx.load(str(prepared)).graph.node]
        convs = [n.name for n in nodes if n.op_type == "Conv"]
        heads = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
        quantize_static(
            str(prepared),
            str(args.out),
            Chips(files, side, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=convs[:1] + heads,
        )
    quantized = onnx.load(str(args.out))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(original.metadata_props)
    onnx.save(quantized, str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); float: {convs[0]} and {heads}")

    a, b = session(args.model), session(args.out)
    rng = random.Random(2)
    x = np.stack([chip(f, side, rng) for f in files[1000:1032]])
    for batch in (1, 4, 32):
        for name, s in (("float", a), ("int8", b)):
            s.run(None, {input_name: x[:batch]})
            start, runs = time.perf_counter(), 0
            while time.perf_counter() - start < 2:
                s.run(None, {input_name: x[:batch]})
                runs += 1
            ms = (time.perf_counter() - start) / runs / batch * 1000
            print(f"batch {batch:2d} {name:5s} {ms:.2f} ms a face")
    for output, (u, v) in zip(
        [o.name for o in a.get_outputs()], zip(a.run(None, {input_name: x}), b.run(None, {input_name: x}))
    ):
        print(f"{output}: argmax agrees on {float((u.argmax(1) == v.argmax(1)).mean()):.3f} of 32 chips")


if __name__ == "__main__":
    main()
