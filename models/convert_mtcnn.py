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

    def conv(self, x, layer, in_order=None):
        """`in_order`: the order the input's channels arrive in, when a layer before permuted them."""
        out = self._name(layer)
        weight = self.w[f"{layer}.weight"]
        if in_order is not None:
            weight = weight[:, in_order]
        w = self.init(f"{layer}.weight", weight)
        b = self.init(f"{layer}.bias", self.w[f"{layer}.bias"])
        self.nodes.append(helper.make_node("Conv", [x, w, b], [out], name=layer))
        return out

    def conv_prelu_pool(self, x, conv, prelu, kernel, stride, in_order=None):
        """Conv → PReLU → MaxPool computed as Conv → MaxPool → PReLU: the same function.

        PReLU costs a pass over its input and, on ONNX Runtime's blocked (NCHWc) convolution
        layout, two layout reorders around it; after pooling it touches a quarter of the values.
        A non-decreasing PReLU (slope >= 0) commutes with max. One with a negative slope a is not
        monotonic: the window's largest PReLU value is max(max x, a * min x), so the layer also
        computes -x for those channels (negated weights: exactly -x) and pools it, min x being
        -max(-x); these extra channels mostly fill the padding of the blocked layout.
        Channels come out negative-slope first; returns the output and that order, which the next
        convolution takes as its `in_order`.
        """
        weight, bias = self.w[f"{conv}.weight"], self.w[f"{conv}.bias"]
        if in_order is not None:
            weight = weight[:, in_order]
        slope = self.w[f"{prelu}.weight"]
        neg = np.flatnonzero(slope < 0)
        pos = np.flatnonzero(slope >= 0)
        assert len(pos) > 0, f"{prelu}: every slope negative (not written for that)"
        order = np.concatenate([neg, pos])
        # Zero channels up to a multiple of 16 (ONNX Runtime's block on AVX-512; 8 on AVX2): the
        # convolution computes the padding anyway, and only an aligned output is pooled blocked.
        pad = -(len(order) + len(neg)) % 16 if len(neg) else 0
        w_all = np.concatenate([weight[order], -weight[neg], np.zeros_like(weight[:pad])])
        b_all = np.concatenate([bias[order], -bias[neg], np.zeros_like(bias[:pad])])
        z = self._name(conv)
        self.nodes.append(helper.make_node(
            "Conv", [x, self.init(f"{conv}.weight", w_all), self.init(f"{conv}.bias", b_all)],
            [z], name=conv))
        pooled = self.maxpool(z, kernel, stride, f"{conv}_pool")
        k, c = len(neg), len(order)
        if k == 0:
            return self.prelu(pooled, prelu, True), order
        split = self.init(f"{prelu}.split", np.array([k, c - k, k, pad], np.int64)[: 4 - (pad == 0)])
        p_neg, p_pos, q_neg, unused = (
            self._name(f"{prelu}_{n}") for n in ("pneg", "ppos", "qneg", "pad"))
        self.nodes.append(helper.make_node(
            "Split", [pooled, split], [p_neg, p_pos, q_neg] + [unused] * (pad > 0), axis=1,
            name=f"{prelu}_split"))
        # Negative slopes: max(max x, a * min x) = max(P, (-a) * Q) with Q = max(-x) = -min x.
        minus_a = self.init(f"{prelu}.minus_weight_neg", (-slope[neg]).reshape(-1, 1, 1))
        aq = self._name(f"{prelu}_aq")
        self.nodes.append(helper.make_node("Mul", [q_neg, minus_a], [aq], name=f"{prelu}_mul_neg"))
        y_neg = self._name(f"{prelu}_yneg")
        self.nodes.append(helper.make_node("Max", [p_neg, aq], [y_neg], name=f"{prelu}_neg"))
        y_pos = self._prelu_values(p_pos, slope[pos].reshape(-1, 1, 1), f"{prelu}_pos")
        out = self._name(prelu)
        self.nodes.append(helper.make_node("Concat", [y_neg, y_pos], [out], axis=1, name=prelu))
        return out, order

    def prelu(self, x, layer, spatial):
        slope = self.w[f"{layer}.weight"]
        # Broadcast against the input: per-channel needs shape (C,1,1) on NCHW.
        return self._prelu_values(x, slope.reshape(-1, 1, 1) if spatial else slope, layer)

    def prelu_blocked(self, x, layer):
        """PReLU as a*x + relu((1-a)*x) (slopes <= 1): per-channel products and a sum, which ONNX
        Runtime keeps in its blocked layout (as 1x1 depthwise convolutions with the ReLU and the
        sum fused), so the convolutions around it need no layout reorders."""
        slope = self.w[f"{layer}.weight"].reshape(-1, 1, 1)
        assert (slope <= 1).all()
        a = self.init(f"{layer}.weight", slope)
        rest = self.init(f"{layer}.one_minus_weight", (1 - slope).astype(np.float32))
        ax, rx, r = (self._name(f"{layer}_{n}") for n in ("ax", "rx", "relu"))
        out = self._name(layer)
        self.nodes.append(helper.make_node("Mul", [x, a], [ax], name=f"{layer}_mul"))
        self.nodes.append(helper.make_node("Mul", [x, rest], [rx], name=f"{layer}_mul_rest"))
        self.nodes.append(helper.make_node("Relu", [rx], [r], name=f"{layer}_relu"))
        self.nodes.append(helper.make_node("Add", [ax, r], [out], name=layer))
        return out

    def _prelu_values(self, x, shaped, layer):
        out = self._name(layer)
        # Not the PRelu operator: ONNX Runtime runs it as a scalar loop with a branch per element
        # (a third of MTCNN's time on a CPU). The same function from vectorised element-wise ops:
        if (shaped <= 1).all():
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

    def dense_whc(self, x, layer, chw):
        """The dense layer after a feature map: facenet-pytorch permutes NCHW to NWHC before
        flattening (its weights came from Caffe/TF order). Here the dense weights' columns are
        permuted instead, so the map is flattened as it is: no transpose at run time."""
        c, h, w = chw
        weight = self.w[f"{layer}.weight"]
        assert weight.shape[1] == c * h * w, f"{layer}: {weight.shape} does not take {chw}"
        # Column (c, h, w) of the NCHW flattening is column (w, h, c) of the reference's.
        whc_index = np.arange(w * h * c).reshape(w, h, c).transpose(2, 1, 0).reshape(-1)
        flat = self._name("flatten")
        self.nodes.append(helper.make_node("Flatten", [x], [flat], axis=1, name="flatten"))
        out = self._name(layer)
        wi = self.init(f"{layer}.weight", np.ascontiguousarray(weight[:, whc_index]))
        b = self.init(f"{layer}.bias", self.w[f"{layer}.bias"])
        self.nodes.append(helper.make_node("Gemm", [flat, wi, b], [out], transB=1, name=layer))
        return out

    def dense(self, x, layer, out=None):
        out = out or self._name(layer)
        w = self.init(f"{layer}.weight", self.w[f"{layer}.weight"])
        b = self.init(f"{layer}.bias", self.w[f"{layer}.bias"])
        self.nodes.append(helper.make_node("Gemm", [x, w, b], [out], transB=1, name=layer))
        return out

    def pnet_heads(self, x):
        """P-Net's two 1x1 heads as one convolution (ONNX Runtime pads each to its channel block:
        one pass instead of two) with six outputs: the two logit differences, whose sigmoids are
        the softmax over (background, face), and the four box offsets. ONNX Runtime would run a
        Softmax over the channel axis through transposes."""
        w1, b1 = self.w["conv4_1.weight"], self.w["conv4_1.bias"]
        w2, b2 = self.w["conv4_2.weight"], self.w["conv4_2.bias"]
        weight = np.concatenate([w1[[0]] - w1[[1]], w1[[1]] - w1[[0]], w2])
        bias = np.concatenate([b1[[0]] - b1[[1]], b1[[1]] - b1[[0]], b2])
        both = self._name("heads")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.init("heads.weight", weight), self.init("heads.bias", bias)],
            [both], name="heads"))
        split = self.init("heads.split", np.array([2, 4], np.int64))
        logit_differences = self._name("logit_differences")
        self.nodes.append(helper.make_node(
            "Split", [both, split], [logit_differences, "reg"], axis=1, name="split_heads"))
        self.nodes.append(helper.make_node("Sigmoid", [logit_differences], ["prob"], name="prob"))

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
    x, order = g.conv_prelu_pool("input", "conv1", "prelu1", 2, 2)
    x = g.prelu_blocked(g.conv(x, "conv2", order), "prelu2")
    x = g.prelu_blocked(g.conv(x, "conv3"), "prelu3")
    g.pnet_heads(x)
    return g.model(
        "pnet", ["batch", 3, "height", "width"],
        [("reg", ["batch", 4, "out_h", "out_w"]), ("prob", ["batch", 2, "out_h", "out_w"])],
        "MTCNN P-Net. input: RGB NCHW, (x-127.5)/128. reg: box offsets per 12px cell, stride 2; "
        "prob: softmax (background, face), computed as sigmoids of the logit differences.",
    )


def build_rnet(w):
    g = GraphBuilder(w)
    x, order = g.conv_prelu_pool("input", "conv1", "prelu1", 3, 2)
    x = g.prelu_blocked(g.conv(x, "conv2", order), "prelu2")
    x = g.maxpool(x, 3, 2, "pool2")
    x = g.prelu_blocked(g.conv(x, "conv3"), "prelu3")
    x = g.prelu(g.dense_whc(x, "dense4", (64, 3, 3)), "prelu4", False)
    g.softmax(g.dense(x, "dense5_1"), "prob")
    g.dense(x, "dense5_2", out="reg")
    return g.model(
        "rnet", ["batch", 3, 24, 24], [("reg", ["batch", 4]), ("prob", ["batch", 2])],
        "MTCNN R-Net. input: 24x24 RGB crops NCHW, (x-127.5)/128. reg: box offsets; prob: softmax.",
    )


def build_onet(w):
    g = GraphBuilder(w)
    x, order = g.conv_prelu_pool("input", "conv1", "prelu1", 3, 2)
    x = g.prelu_blocked(g.conv(x, "conv2", order), "prelu2")
    x = g.maxpool(x, 3, 2, "pool2")
    x = g.prelu_blocked(g.conv(x, "conv3"), "prelu3")
    x = g.maxpool(x, 2, 2, "pool3")
    x = g.prelu_blocked(g.conv(x, "conv4"), "prelu4")
    x = g.prelu(g.dense_whc(x, "dense5", (128, 3, 3)), "prelu5", False)
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
