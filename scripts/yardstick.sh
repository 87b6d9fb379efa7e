#!/usr/bin/env bash
# The real-footage yardstick: runs faceflow on every labelled clip (tests/yardstick/*.json, clips
# in ../shared/data/video) with the flags given, and scores the runs against the labels.
#
#   scripts/yardstick.sh [FLAGS...]        # e.g. --model models/other.onnx, --detect-every 1
#   FACEFLOW_BIN=path/to/faceflow scripts/yardstick.sh   # another build (default: release)
#
# Runs are kept in .cache/yardstick/ (one <clip>.jsonl each) for a look afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
videos=${YARDSTICK_VIDEOS:-../shared/data/video}
out=.cache/yardstick
bin=${FACEFLOW_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked -q
  bin=target/release/faceflow
fi
mkdir -p "$out"
for labels in tests/yardstick/*.json; do
  clip=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["clip"])' "$labels")
  [ -f "$videos/$clip" ] || { echo "error: $videos/$clip: no such clip" >&2; exit 1; }
  "$bin" run --input "$videos/$clip" --json "$out/$clip.jsonl" "$@" 2>"$out/$clip.log" \
    || { echo "error: faceflow failed on $clip (see $out/$clip.log)" >&2; exit 1; }
done
"$bin" yardstick --runs "$out" --labels tests/yardstick
