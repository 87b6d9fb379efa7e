#!/usr/bin/env bash
# The speed table of docs/performance.md, on this machine, in one run: faceflow (release build, default
# settings, whole process) beside the reference MTCNN (facenet-pytorch 2.6.0, same weights and
# defaults, CPU, whole process as a user runs it; `detect` and the reference: the median of three
# runs), on frames of one clip rendered at 854x480,
# 1280x720 and 1920x1080.
#
#   scripts/bench.sh [CLIP]           # CLIP: any video with faces (default: the shared Hamilton clip)
#   BENCH_REFERENCE=0 scripts/bench.sh  # faceflow only (no Python venv, no torch download)
#
# The reference goes into a virtual environment of its own under .cache/bench/venv (PyPI's torch
# with its CUDA libraries, about 3 GB, downloaded once), never into the repository. Rendered clips and frames are
# kept in .cache/bench/ between runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
clip=${1:-../shared/data/video/face_recognition_short_hamilton_clip.mp4}
reference=${BENCH_REFERENCE:-1}
cache=.cache/bench
frames=50
say() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
[ -f "$clip" ] || die "$clip: no such clip"
command -v gst-launch-1.0 >/dev/null || die "gst-launch-1.0 missing: run scripts/deps.sh"

say "building faceflow (release)"
cargo build --release --locked -q
ff=target/release/faceflow

# --- inputs -----------------------------------------------------------------------------------
name=$(basename "${clip%.*}")
mkdir -p "$cache/$name"
for size in 854x480 1280x720 1920x1080; do
  out=$cache/$name/$size.mp4
  [ -s "$out" ] && continue
  say "rendering $size"
  gst-launch-1.0 -q filesrc location="$clip" ! decodebin ! videoconvert ! videoscale \
    ! "video/x-raw,width=${size%x*},height=${size#*x}" ! x264enc speed-preset=fast bitrate=6000 \
    ! mp4mux ! filesink location="$out.part" || die "rendering $size failed"
  mv "$out.part" "$out"
done
stills=$cache/$name/frames-png
if [ "$(ls "$stills" 2>/dev/null | wc -l)" -lt $frames ]; then
  say "extracting frames at 854x480 (PNG: both detectors read the same pixels)"
  rm -rf "$stills"; mkdir -p "$stills"
  gst-launch-1.0 -q filesrc location="$cache/$name/854x480.mp4" ! decodebin ! videoconvert \
    ! pngenc ! multifilesink location="$stills/f%04d.png" max-files=100000
fi
mapfile -t images < <(ls "$stills"/*.png | awk -v n=$frames 'NR % 3 == 1' | head -$frames)
[ ${#images[@]} -eq $frames ] || die "$clip is too short: ${#images[@]} frames, need $frames"
# The clip's frame rate, from the timestamps faceflow reports for its first frames.
clip_fps=$("$ff" run --input "$cache/$name/854x480.mp4" --max-frames 11 --no-attributes --json - 2>/dev/null \
  | python3 -c "import json,sys; r=[json.loads(l) for l in sys.stdin]; t=[x['pts_ms'] for x in r if x.get('type')=='frame']; print(round(1000*(len(t)-1)/(t[-1]-t[0]), 2))")

seconds() { # command... -> wall seconds of the whole process
  local start end
  start=$(date +%s.%N); "$@" >/dev/null 2>&1 || die "failed: $*"; end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.2f}')"
}
run_fps() { # input... -> fps from faceflow's summary (total line with several streams)
  local args=() f
  for f in "$@"; do args+=(--input "$f"); done
  local fps
  fps=$("$ff" run "${args[@]}" --json /dev/null 2>&1 | grep -oE '[0-9.]+ fps$' | tail -1 | cut -d' ' -f1) || true
  [ -n "$fps" ] || die "faceflow run ${args[*]} gave no summary"
  echo "$fps"
}

# --- faceflow ---------------------------------------------------------------------------------
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
say "faceflow detect on $frames frames (three runs, the median)"
detect_runs=()
for _ in 1 2 3; do
  t=$(seconds "$ff" detect "${images[@]}" --json "$cache/$name/faceflow.jsonl")
  detect_runs+=("$t")
done
detect_s=$(median3 "${detect_runs[@]}")
declare -A run
for size in 854x480 1280x720 1920x1080; do
  say "faceflow run at $size"
  run[$size]=$(run_fps "$cache/$name/$size.mp4")
done
say "faceflow run, two 1280x720 streams"
two=$(run_fps "$cache/$name/1280x720.mp4" "$cache/$name/1280x720.mp4")

# --- reference --------------------------------------------------------------------------------
ref_loop=-; ref_process=-; parity=-
if [ "$reference" = 1 ]; then
  venv=$cache/venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import facenet_pytorch' 2>/dev/null; then
    say "installing the reference (facenet-pytorch 2.6.0, torch CPU) into $venv"
    python3 -m venv "$venv"
    # PyPI's torch brings its CUDA libraries (about 3 GB); it runs on the CPU all the same.
    "$venv/bin/pip" install -q torch==2.15.0 torchvision==0.29.2 pillow requests tqdm "numpy<3"
    "$venv/bin/pip" install -q --no-deps facenet-pytorch==2.6.0
  fi
  say "reference MTCNN on the same $frames frames (three runs, the median)"
  cat > "$cache/reference.py" <<'EOF'
import json, sys, time
import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image
ours_path, out_path, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
images = [Image.open(p).convert("RGB") for p in paths]
mtcnn = MTCNN(keep_all=True, device="cpu")
started = time.perf_counter()
found = []
for im in images:
    boxes, probs = mtcnn.detect(im)
    found.append([] if boxes is None else boxes.tolist())
loop = time.perf_counter() - started
# faceflow reports boxes clipped to the picture; the reference's may reach outside it.
found = [[[max(0.0, b[0]), max(0.0, b[1]), min(im.width, b[2]), min(im.height, b[3])] for b in boxes]
         for im, boxes in zip(images, found)]
json.dump(found, open(out_path, "w"))
def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0])); iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2]-a[0])*(a[3]-a[1]) + (b[2]-b[0])*(b[3]-b[1]) - inter
    return inter / union if union > 0 else 0.0
ours = [[f["bbox"] for f in json.loads(l)["faces"]] for l in open(ours_path)]
matched = sum(1 for r, o in zip(found, ours) for b in r if any(iou(b, x) >= 0.9 for x in o))
ref_n = sum(len(r) for r in found); our_n = sum(len(o) for o in ours)
extra = sum(1 for r, o in zip(found, ours) for x in o if not any(iou(b, x) >= 0.9 for b in r))
print(f"{loop:.2f} {matched}/{ref_n} {extra}/{our_n}")
EOF
  processes=(); loops=()
  for _ in 1 2 3; do
    start=$(date +%s.%N)
    result=$("$venv/bin/python" "$cache/reference.py" "$cache/$name/faceflow.jsonl" \
      "$cache/$name/reference.json" "${images[@]}") || die "the reference failed"
    end=$(date +%s.%N)
    processes+=("$(python3 -c "print(f'{$end - $start:.2f}')")")
    read -r loop matched extra <<<"$result"
    loops+=("$loop")
  done
  ref_process=$(median3 "${processes[@]}"); ref_loop=$(median3 "${loops[@]}")
  parity="$matched reference faces matched at IoU >= 0.9; $extra of faceflow's unmatched"
fi

# --- table ------------------------------------------------------------------------------------
ratio() { python3 -c "a='$1'; b='$2'; print(f'{float(a)/float(b):.1f}x' if a not in ('-','') and b not in ('-','') else '-')"; }
rt() { python3 -c "print(f'{float($1)/$clip_fps:.2f}x real time')"; }
cores=$(nproc)
cat <<EOF

$(basename "$clip") at ${clip_fps} fps; $cores cores; faceflow $($ff --version | cut -d' ' -f2), default settings; $(date -u +%F)

| work | faceflow | reference / target |
|---|---|---|
| MTCNN on $frames frames 854x480 (\`detect\`, whole process) | ${detect_s} s | facenet-pytorch ${ref_process} s whole process ($(ratio "$ref_process" "$detect_s")), ${ref_loop} s of it detecting ($(ratio "$ref_loop" "$detect_s")); target 10x |
| full pipeline 854x480 | ${run[854x480]} fps, $(rt "${run[854x480]}") | target 3x |
| full pipeline 1280x720 | ${run[1280x720]} fps, $(rt "${run[1280x720]}") | |
| full pipeline 1920x1080 | ${run[1920x1080]} fps, $(rt "${run[1920x1080]}") | target 1x (25 fps) |
| two 1280x720 streams | ${two} fps in all | target 50 fps |

MTCNN parity on those frames: ${parity}.
EOF
