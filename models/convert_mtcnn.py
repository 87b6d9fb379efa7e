#!/usr/bin/env python3
"""Fetch the facenet-pytorch 2.6.0 wheel from PyPI and convert its MTCNN weights to ONNX.

Needs only numpy and onnx (no torch): the wheel's weights are legacy (pre-1.6) torch pickles, which
this script reads itself. Writes models/mtcnn/{pnet,rnet,onet}.onnx with a dynamic batch axis (P-Net
also dynamic height and width) and prints their SHA-256 for models/README.md.

    python3 -m venv .venv-models && .venv-models/bin/pip install numpy onnx
    .venv-models/bin/python models/convert_mtcnn.py [--wheel PATH] [--check-npz DIR]
"""
import argparse
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WHEEL_NAME = "facenet_pytorch-2.6.0-py3-none-any.whl"
WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
OUT_DIR = Path(__file__).resolve().parent / "mtcnn"

# --- legacy torch pickle reader -------------------------------------------------------------------
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class _StorageType:
    def __init__(self, name):
        self.dtype = STORAGE_DTYPES[name]


class _TensorRef:
    def __init__(self, storage_key, offset, size, stride):
        self.storage_key, self.offset, self.size, self.stride = storage_key, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class _LegacyUnpickler(pickle.Unpickler):
    def __init__(self, fileobj, storages):
        super().__init__(fileobj)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in weights file")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel, view_metadata)
        _, storage_type, key, _location, _numel, _view = pid
        self.storages.setdefault(key, storage_type.dtype)
        return key


def load_legacy_state_dict(data: bytes) -> "OrderedDict[str, np.ndarray]":
    f = io.BytesIO(data)
    if pickle.load(f) != LEGACY_MAGIC:
        raise ValueError("not a legacy torch file (bad magic number)")
    pickle.load(f)  # protocol version
    pickle.load(f)  # sys info
    storage_dtypes = {}
    state = _LegacyUnpickler(f, storage_dtypes).load()
    keys = pickle.load(f)
    arrays = {}
    for key in keys:
        numel = int.from_bytes(f.read(8), "little")
        dtype = np.dtype(storage_dtypes[key])
        arrays[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype)
    out = OrderedDict()
    for name, ref in state.items():
        flat = arrays[ref.storage_key]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.size, strides=[s * itemsize for s in ref.stride]
        )
        out[name] = np.ascontiguousarray(view, dtype=np.float32)
    return out


# --- ONNX graph builders --------------------------------------------------------------------------
class GraphBuilder:
    def __init__(self, weights):
        self.w = weights
        self.nodes = []
        self.inits = []
        self.counter = 0

    def _name(self, stem):
        self.counter += 1
        return f"{stem}_{self.counter}"

    def init(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def conv(self, x, layer):
        out = self._name(layer)
        w = self.init(f"{layer}.weight", self.w[f"{layer}.weight"])
        b = self.init(f"{layer}.bias", self.w[f"{layer}.bias"])
        self.nodes.append(helper.make_node("Conv", [x, w, b], [out], name=layer))
        return out

    def prelu(self, x, layer, spatial):
        out = self._name(layer)
        slope = self.w[f"{layer}.weight"]
        # Broadcast against the input: per-channel needs shape (C,1,1) on NCHW.
        shaped = slope.reshape(-1, 1, 1) if spatial else slope
        # Not the PRelu operator: ONNX Runtime runs it as a scalar loop with a branch per element
        # (a third of MTCNN's time on a CPU). The same function from vectorised element-wise ops:
        if (slope <= 1).all():
            # max(x, a*x) is PReLU for every slope a <= 1 (a*x computed as PRelu computes it).
            s = self.init(f"{layer}.weight", shaped)
            ax = self._name(f"{layer}_ax")
            self.nodes.append(helper.make_node("Mul", [x, s], [ax], name=f"{layer}_mul"))
            self.nodes.append(helper.make_node("Max", [x, ax], [out], name=layer))
        else:
            # x + (a - 1) * min(x, 0) for layers with a slope above 1.
            b = self.init(f"{layer}.weight_minus_one", (shaped - 1).astype(np.float32))
            zero = self.init(f"{layer}.zero", np.zeros((), np.float32))
            neg = self._name(f"{layer}_neg")
            scaled = self._name(f"{layer}_scaled")
            self.nodes.append(helper.make_node("Min", [x, zero], [neg], name=f"{layer}_min"))
            self.nodes.append(helper.make_node("Mul", [neg, b], [scaled], name=f"{layer}_mul"))
            self.nodes.append(helper.make_node("Add", [x, scaled], [out], name=layer))
        return out

    def maxpool(self, x, kernel, stride, name):
        out = self._name(name)
        self.nodes.append(
            helper.make_node(
                "MaxPool", [x], [out], name=name, kernel_shape=[kernel, kernel],
                strides=[stride, stride], ceil_mode=1,
            )
        )
        return out

    def flatten_whc(self, x):
        # facenet-pytorch permutes NCHW -> NWHC before flattening (weights came from Caffe/TF order).
        t = self._name("permute")
        self.nodes.append(helper.make_node("Transpose", [x], [t], perm=[0, 3, 2, 1], name="permute"))
        out = self._name("flatten")
        self.nodes.append(helper.make_node("Flatten", [t], [out], axis=1, name="flatten"))
        return out

    def dense(self, x, layer, out=None):
        out = out or self._name(layer)
        w = self.init(f"{layer}.weight", self.w[f"{layer}.weight"])
        b = self.init(f"{layer}.bias", self.w[f"{layer}.bias"])
        self.nodes.append(helper.make_node("Gemm", [x, w, b], [out], transB=1, name=layer))
        return out

    def softmax_channels2(self, x, out):
        # Softmax over two channels of a map is a sigmoid of their difference; ONNX Runtime runs
        # Softmax on a non-last axis through transposes.
        split = self.init("prob.split", np.array([1, 1], np.int64))
        l0, l1 = self._name("logit0"), self._name("logit1")
        self.nodes.append(helper.make_node("Split", [x, split], [l0, l1], axis=1, name="split_logits"))
        d10, d01 = self._name("d10"), self._name("d01")
        self.nodes.append(helper.make_node("Sub", [l1, l0], [d10], name="face_minus_bg"))
        self.nodes.append(helper.make_node("Sub", [l0, l1], [d01], name="bg_minus_face"))
        p0, p1 = self._name("p0"), self._name("p1")
        self.nodes.append(helper.make_node("Sigmoid", [d01], [p0], name="p_background"))
        self.nodes.append(helper.make_node("Sigmoid", [d10], [p1], name="p_face"))
        self.nodes.append(helper.make_node("Concat", [p0, p1], [out], axis=1, name="prob_concat"))
        return out

    def softmax(self, x, out):
        self.nodes.append(helper.make_node("Softmax", [x], [out], axis=1, name=f"softmax_{out}"))
        return out

    def model(self, name, in_shape, outputs, doc):
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph, producer_name="faceflow models/convert_mtcnn.py", doc_string=doc,
            opset_imports=[helper.make_opsetid("", 17)],
        )
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def build_pnet(w):
    g = GraphBuilder(w)
    x = g.prelu(g.conv("input", "conv1"), "prelu1", True)
    x = g.maxpool(x, 2, 2, "pool1")
    x = g.prelu(g.conv(x, "conv2"), "prelu2", True)
    x = g.prelu(g.conv(x, "conv3"), "prelu3", True)
    logits = g.conv(x, "conv4_1")
    g.softmax_channels2(logits, "prob")
    reg = g.conv(x, "conv4_2")
    g.nodes.append(helper.make_node("Identity", [reg], ["reg"], name="reg"))
    return g.model(
        "pnet", ["batch", 3, "height", "width"],
        [("reg", ["batch", 4, "out_h", "out_w"]), ("prob", ["batch", 2, "out_h", "out_w"])],
        "MTCNN P-Net. input: RGB NCHW, (x-127.5)/128. reg: box offsets per 12px cell, stride 2; "
        "prob: softmax (background, face), computed as sigmoids of the logit differences.",
    )


def build_rnet(w):
    g = GraphBuilder(w)
    x = g.prelu(g.conv("input", "conv1"), "prelu1", True)
    x = g.maxpool(x, 3, 2, "pool1")
    x = g.prelu(g.conv(x, "conv2"), "prelu2", True)
    x = g.maxpool(x, 3, 2, "pool2")
    x = g.prelu(g.conv(x, "conv3"), "prelu3", True)
    x = g.prelu(g.dense(g.flatten_whc(x), "dense4"), "prelu4", False)
    g.softmax(g.dense(x, "dense5_1"), "prob")
    g.dense(x, "dense5_2", out="reg")
    return g.model(
        "rnet", ["batch", 3, 24, 24], [("reg", ["batch", 4]), ("prob", ["batch", 2])],
        "MTCNN R-Net. input: 24x24 RGB crops NCHW, (x-127.5)/128. reg: box offsets; prob: softmax.",
    )


def build_onet(w):
    g = GraphBuilder(w)
    x = g.prelu(g.conv("input", "conv1"), "prelu1", True)
    x = g.maxpool(x, 3, 2, "pool1")
    x = g.prelu(g.conv(x, "conv2"), "prelu2", True)
    x = g.maxpool(x, 3, 2, "pool2")
    x = g.prelu(g.conv(x, "conv3"), "prelu3", True)
    x = g.maxpool(x, 2, 2, "pool3")
    x = g.prelu(g.conv(x, "conv4"), "prelu4", True)
    x = g.prelu(g.dense(g.flatten_whc(x), "dense5"), "prelu5", False)
    g.softmax(g.dense(x, "dense6_1"), "prob")
    g.dense(x, "dense6_2", out="reg")
    g.dense(x, "dense6_3", out="landmarks")
    return g.model(
        "onet", ["batch", 3, 48, 48],
        [("reg", ["batch", 4]), ("landmarks", ["batch", 10]), ("prob", ["batch", 2])],
        "MTCNN O-Net. input: 48x48 RGB crops NCHW, (x-127.5)/128. reg: box offsets; landmarks: "
        "x1..x5, y1..y5 relative to the box; prob: softmax.",
    )


def fetch_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
         "-d", str(dest), "facenet-pytorch==2.6.0"],
        check=True,
    )
    return dest / WHEEL_NAME


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="use this wheel instead of downloading it")
    ap.add_argument("--check-npz", type=Path, help="compare weights with DIR/{pnet,rnet,onet}.npz")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            sys.exit(f"error: {wheel}: sha256 {digest} does not match {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            blobs = {n: zf.read(f"facenet_pytorch/data/{n}.pt") for n in ("pnet", "rnet", "onet")}

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, build in (("pnet", build_pnet), ("rnet", build_rnet), ("onet", build_onet)):
        weights = load_legacy_state_dict(blobs[name])
        if args.check_npz:
            ref = np.load(args.check_npz / f"{name}.npz")
            for k, v in weights.items():
                if not np.array_equal(ref[k], v):
                    sys.exit(f"error: {name}.{k} differs from {args.check_npz}/{name}.npz")
        model = build(weights)
        path = OUT_DIR / f"{name}.onnx"
        data = model.SerializeToString()
        path.write_bytes(data)
        print(f"{path.name}  sha256 {hashlib.sha256(data).hexdigest()}  {len(data)} bytes")


if __name__ == "__main__":
    main()
