#!/bin/bash
# Copies of the images an eval report scored, degraded, to score a model on faces that look less
# like UTKFace's photographs (same file names, so the labels come with them):
#   small100 / small70  the 200×200 chips scaled down to 100 / 70 px (faces about 60 / 40 px)
#   video               contrast 0.7 and a little brighter, down to 64 px, JPEG quality 25, back up
#                       to 128 px (a washed-out, low-bit-rate video face)
# Usage: models/degrade.sh REPORT_DIR OUT_DIR [small100|small70|video]...
# then:  faceflow eval --source OUT_DIR/video --split all --model M --report R
# (`--split all`: the copies are the report's images, whatever split it scored; their content hashes
# differ from the originals', so the trainer's split rule does not apply to them.)
# GStreamer's scaler is not bit-exact from run to run (a few pixels differ by a few levels), so a
# second set can score an image or two apart from the first.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT_DIR OUT_DIR [small100|small70|video]..." >&2
  exit 2
fi
report=$1
out=$2
shift 2
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(small100 small70 video)
[ -f "$report/predictions.jsonl" ] || { echo "$0: no $report/predictions.jsonl" >&2; exit 1; }
command -v gst-launch-1.0 >/dev/null || { echo "$0: gst-launch-1.0 not found" >&2; exit 1; }

files=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    print(json.loads(line)["file"])' "$report/predictions.jsonl")

for kind in "${kinds[@]}"; do
  case $kind in
    small100) chain="videoscale method=bilinear ! video/x-raw,width=100,height=100 ! jpegenc quality=90" ;;
    small70) chain="videoscale method=bilinear ! video/x-raw,width=70,height=70 ! jpegenc quality=90" ;;
    video) chain="videoconvert ! videobalance contrast=0.7 brightness=0.12 ! videoscale method=bilinear \
      ! video/x-raw,width=64,height=64 ! jpegenc quality=25 ! jpegdec ! videoscale \
      ! video/x-raw,width=128,height=128 ! jpegenc quality=90" ;;
    *) echo "$0: unknown kind $kind (small100, small70 or video)" >&2; exit 2 ;;
  esac
  mkdir -p "$out/$kind"
  n=0
  while IFS= read -r f; do
    # shellcheck disable=SC2086 # the chain is a gst-launch pipeline description
    gst-launch-1.0 -q filesrc location="$f" ! jpegdec ! $chain ! filesink location="$out/$kind/$(basename "$f")"
    n=$((n + 1))
    [ $((n % 500)) -ne 0 ] || echo "$kind: $n images" >&2
  done <<< "$files"
  echo "$kind: $n images in $out/$kind" >&2
done
