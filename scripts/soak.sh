#!/usr/bin/env bash
# Soak test (not in CI): a live RTSP camera (a real clip looped by examples/rtsp_camera.rs) through
# the full pipeline (detect + attributes + JSON) for DURATION seconds. faceflow prints a health
# line every STATS_EVERY seconds (frames, queue depths, resident memory); at the end this script
# prints resident memory per interval and whether it stayed flat.
#
#   scripts/soak.sh [DURATION_S=3600] [CLIP=../shared/data/video/face_recognition_short_hamilton_clip.mp4] [FPS=10]
#
# Environment: STATS_EVERY (60), OUT (runs/soak-DATE), FACEFLOW (binary; default: cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-3600}
clip=${2:-../shared/data/video/face_recognition_short_hamilton_clip.mp4}
fps=${3:-10}
stats_every=${STATS_EVERY:-60}
out=${OUT:-runs/soak-$(date +%Y%m%d-%H%M%S)}
port=${PORT:-8554}

[ -f "$clip" ] || { echo "soak: $clip: no such file" >&2; exit 1; }
mkdir -p "$out/frames"

cargo build --quiet --example rtsp_camera ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}
camera=target/debug/examples/rtsp_camera
if [ -z "${FACEFLOW:-}" ]; then
    cargo build --quiet --bin faceflow ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}
    FACEFLOW=target/debug/faceflow
fi

if [ ! -f "$out/frames/00000.jpg" ]; then
    echo "soak: extracting frames of $clip (640x360 JPEG)"
    gst-launch-1.0 -q filesrc location="$clip" ! decodebin ! videoconvert ! videoscale \
        ! video/x-raw,width=640,height=360 ! jpegenc quality=90 \
        ! multifilesink location="$out/frames/%05d.jpg"
fi

"$camera" "$out/frames" "$fps" "$port" > "$out/camera.log" 2>&1 &
camera_pid=$!
trap 'kill $camera_pid 2>/dev/null || true' EXIT
sleep 2

echo "soak: $duration s of rtsp://127.0.0.1:$port/camera at $fps fps; health every $stats_every s in $out/faceflow.log"
set +e
timeout --preserve-status --signal=INT "$duration" "$FACEFLOW" run --input "rtsp://127.0.0.1:$port/camera" \
    --stats-every "$stats_every" --json "$out/out.jsonl" > /dev/null 2> "$out/faceflow.log"
status=$?
set -e
# 130: stopped by the timeout's Ctrl-C, as planned.
if [ "$status" != 0 ] && [ "$status" != 130 ]; then
    echo "soak: faceflow exited with $status:" >&2
    tail -5 "$out/faceflow.log" >&2
    exit 1
fi

python3 - "$out/faceflow.log" "$out/out.jsonl" <<'PY' | tee "$out/summary.txt"
import json, sys
rows = []
for line in open(sys.argv[1]):
    if line.startswith("stats: "):
        rows.append(dict(kv.split("=", 1) for kv in line.split()[1:]))
records = sum(1 for _ in open(sys.argv[2]))
summary = [l.strip() for l in open(sys.argv[1]) if l.startswith("faceflow: stream")]
print(f"{'t':>6} {'decoded':>8} {'reported':>9} {'dropped':>8} {'faces':>7} {'rss_mb':>7}  queues")
for r in rows:
    print(f"{r['t']:>6} {r['decoded']:>8} {r['reported']:>9} {r['dropped']:>8} {r['faces']:>7} {r['rss_mb']:>7}  {r['queues']}")
rss = [float(r["rss_mb"]) for r in rows if r["rss_mb"] != "?"]
if len(rss) >= 4:
    # Warm-up (allocator pools, ORT plans) is the first quarter; after it memory should stay flat.
    settled = rss[len(rss) // 4:]
    growth = settled[-1] - settled[0]
    print(f"resident memory: start {rss[0]:.1f} MB, after warm-up {settled[0]:.1f} MB, end {rss[-1]:.1f} MB, "
          f"max {max(rss):.1f} MB; growth after warm-up {growth:+.1f} MB ({100 * growth / settled[0]:+.1f} %)")
print(f"JSON records: {records}")
for s in summary:
    print(s)
PY
