#!/usr/bin/env bash
# Many live cameras on one machine: N copies of a real clip played live (at their own frame rate,
# as cameras deliver), N = 1 … MAX, and for each N the frames kept, fps, faces found per processed
# frame against the same clip run alone (every frame, a file), people counted, and how evenly the
# frames kept are spread (the longest run of frames not kept).
#
#   scripts/overload.sh [CLIP] [MAX_STREAMS] [run flags…]
#
# CLIP defaults to the Hamilton clip rendered at 1280x720, 25 fps, six times over (55 s: long
# enough for the pace to settle), made with gst-launch into .cache/bench/h/. Runs are kept in
# .cache/overload/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
die() { echo "overload: $*" >&2; exit 1; }
bin=${FACEFLOW_BIN:-target/release/faceflow}
[ -x "$bin" ] || die "$bin missing: cargo build --release --locked"
clip=${1:-}
max=${2:-6}
shift $(( $# > 2 ? 2 : $# )) || true
if [ -z "$clip" ]; then
  clip=.cache/bench/h/1280x720-25x6.mp4
  if [ ! -f "$clip" ]; then
    src=../shared/data/video/face_recognition_short_hamilton_clip.mp4
    [ -f "$src" ] || die "$src missing"
    mkdir -p "$(dirname "$clip")"
    part() { echo "filesrc location=$src ! qtdemux ! h264parse ! avdec_h264 ! c."; }
    # shellcheck disable=SC2046
    gst-launch-1.0 -q concat name=c ! videoconvert ! videoscale ! videorate \
      ! video/x-raw,width=1280,height=720,framerate=25/1 ! x264enc speed-preset=fast bitrate=4000 \
      ! mp4mux ! filesink location="$clip.part" $(part) $(part) $(part) $(part) $(part) $(part) \
      || die "rendering failed"
    mv "$clip.part" "$clip"
  fi
fi
[ -f "$clip" ] || die "$clip: no such file"
out=.cache/overload
mkdir -p "$out"
"$bin" run --input "$clip" --json "$out/alone.jsonl" "$@" 2>"$out/alone.log" || die "alone: see $out/alone.log"
for n in $(seq 1 "$max"); do
  inputs=()
  for _ in $(seq 1 "$n"); do inputs+=(--input "$clip"); done
  "$bin" run --live true "${inputs[@]}" --json "$out/live-$n.jsonl" "$@" 2>"$out/live-$n.log" \
    || die "$n streams: see $out/live-$n.log"
done
python3 - "$out" "$max" <<'EOF'
import json, sys
out, top = sys.argv[1], int(sys.argv[2])

def read(path):
    frames, faces, people, interval = {}, {}, {}, {}
    for line in open(path):
        r = json.loads(line)
        kind = r.get("type", "frame")
        s = r.get("stream")
        if kind == "frame":
            frames.setdefault(s, []).append(r["frame"])
            faces[s] = faces.get(s, 0) + len(r.get("faces", []))
        elif kind == "track":
            people[s] = people.get(s, 0) + 1
    return frames, faces, people

frames, faces, people = read(f"{out}/alone.jsonl")
alone_frames = sum(len(v) for v in frames.values())
alone_fpf = sum(faces.values()) / max(alone_frames, 1)
alone_people = sum(people.values())
print(f"alone (file, every frame): {alone_frames} frames, {alone_fpf:.2f} faces per frame, {alone_people} people\n")
print("| live streams | frames kept (all; least stream) | fps processed (all streams) | faces per processed frame (vs alone) | people per stream (vs alone) | longest run not kept | full search every (median stream) |")
print("|---|---|---|---|---|---|---|")
for n in range(1, top + 1):
    frames, faces, people = read(f"{out}/live-{n}.jsonl")
    log = open(f"{out}/live-{n}.log").read().splitlines()
    total = [l for l in log if l.startswith("faceflow: total") or (n == 1 and l.startswith("faceflow: stream"))][-1]
    decoded = int(total.split(" frames decoded")[0].split()[-1])
    kept = sum(len(v) for v in frames.values())
    secs = float(total.split(" s, ")[0].split()[-1])
    fpf = sum(faces.values()) / max(kept, 1)
    ppl = sum(people.values()) / n
    runs = []
    for v in frames.values():
        runs.append(max((b - a - 1 for a, b in zip(v, v[1:])), default=0))
    intervals = sorted(
        float(l.split("full search every ")[1].split(" ms")[0])
        for l in log if "full search every " in l and l.startswith("faceflow: stream")
    )
    interval = f"{intervals[len(intervals) // 2]:.0f} ms" if intervals else "-"
    per_stream = decoded / n
    least = min((len(v) for v in frames.values()), default=0) if len(frames) == n else 0
    print(f"| {n} | {100 * kept / max(decoded, 1):.1f} % ({kept}/{decoded}); {100 * least / max(per_stream, 1):.1f} % | {kept / secs:.1f} | {fpf:.2f} ({fpf / alone_fpf:.2f}) | {ppl:.1f} ({ppl / max(alone_people, 1):.2f}) | {max(runs)} | {interval} |")
EOF
