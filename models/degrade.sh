#!/bin/bash
# Copies of the images an eval report scored, degraded, to score a model on faces that look less
# like UTKFace's photographs (same file names, so the labels come with them). Kinds:
#   small100 / small70  the 200×200 chips scaled down to 100 / 70 px (faces about 60 / 40 px)
#   video               contrast 0.7 and a little brighter, down to 64 px, JPEG quality 25, back up
#                       to 128 px (a washed-out, low-bit-rate video face)
# Every copy is written as JPEG (quality 90 after the steps above); inputs must be JPEG, and
# non-square ones are squeezed to a square.
#
# Usage: models/degrade.sh REPORT_DIR OUT_DIR [small100|small70|video]...   (all three by default)
# Run it from the folder `eval` ran in: predictions.jsonl names the images as eval was given them.
# Then, per kind: faceflow eval --source OUT_DIR/KIND --split all --model M --report R
# (`--split all`: the copies are the report's images, whatever split it scored; their content hashes
# differ from the originals', so the trainer's split rule does not apply to them.)
# GStreamer's scaler is not bit-exact from run to run (a few pixels differ by a few levels), so a
# second set can score an image or two apart from the first.
set -euo pipefail
usage="usage: $0 REPORT_DIR OUT_DIR [small100|small70|video]..."
if [ $# -lt 2 ]; then
  echo "$usage" >&2
  exit 2
fi
report=$1
out=$2
shift 2
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(small100 small70 video)
chain_of() {
  case $1 in
    small100) echo "videoscale method=bilinear ! video/x-raw,width=100,height=100 ! jpegenc quality=90" ;;
    small70) echo "videoscale method=bilinear ! video/x-raw,width=70,height=70 ! jpegenc quality=90" ;;
    video) echo "videoconvert ! videobalance contrast=0.7 brightness=0.12 ! videoscale method=bilinear \
      ! video/x-raw,width=64,height=64 ! jpegenc quality=25 ! jpegdec ! videoscale \
      ! video/x-raw,width=128,height=128 ! jpegenc quality=90" ;;
    *) return 1 ;;
  esac
}
for kind in "${kinds[@]}"; do
  chain_of "$kind" >/dev/null || { echo "$0: unknown kind '$kind' (small100, small70 or video)" >&2; exit 2; }
  if [ -d "$out/$kind" ] && [ -n "$(ls -A "$out/$kind")" ]; then
    echo "$0: $out/$kind is not empty; remove it or choose another OUT_DIR (a mixed set would be scored as one)" >&2
    exit 1
  fi
done
[ -f "$report/predictions.jsonl" ] || { echo "$0: no $report/predictions.jsonl" >&2; exit 1; }
for tool in gst-launch-1.0 python3; do
  command -v $tool >/dev/null || { echo "$0: $tool not found" >&2; exit 1; }
done

mapfile -t files < <(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    if line.strip():
        print(json.loads(line)["file"])' "$report/predictions.jsonl")
[ ${#files[@]} -gt 0 ] || { echo "$0: $report/predictions.jsonl lists no images" >&2; exit 1; }
for f in "${files[@]}"; do
  [ -f "$f" ] || { echo "$0: $f (from the report) not found; run from the folder eval ran in" >&2; exit 1; }
done

for kind in "${kinds[@]}"; do
  chain=$(chain_of "$kind")
  mkdir -p "$out/$kind"
  n=0
  for f in "${files[@]}"; do
    target="$out/$kind/$(basename "$f")"
    # A partial file never takes the image's name: eval would read it as a broken image.
    # shellcheck disable=SC2086 # the chain is a gst-launch pipeline description
    if ! gst-launch-1.0 -q filesrc location="$f" ! jpegdec ! $chain ! filesink location="$target.part"; then
      rm -f "$target.part"
      echo "$0: could not convert $f" >&2
      exit 1
    fi
    mv "$target.part" "$target"
    n=$((n + 1))
    [ $((n % 500)) -ne 0 ] || echo "$kind: $n images" >&2
  done
  echo "$kind: $n images in $out/$kind" >&2
done
