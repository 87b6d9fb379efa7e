#!/usr/bin/env bash
# First command of the README: installs what is missing, builds faceflow, and runs it on the demo clip.
# scripts/setup.sh --cuda also installs what --device cuda needs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# --cuda: also the CUDA build of ONNX Runtime (for --device cuda; an NVIDIA GPU and driver needed).
scripts/deps.sh "$@"
echo "[setup] building faceflow (release; the first build takes a few minutes)" >&2
cargo build --release --locked
mkdir -p out
echo "[setup] running: target/release/faceflow run --input samples/astronaut.mp4 --json out/astronaut.jsonl" >&2
target/release/faceflow run --input samples/astronaut.mp4 --json out/astronaut.jsonl
echo "[setup] first record:" >&2
head -n 1 out/astronaut.jsonl
