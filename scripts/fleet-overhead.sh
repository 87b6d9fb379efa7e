#!/usr/bin/env bash
# What a fleet worker costs against `faceflow run`: the same clip, with defaults, run N times
# each way, alternated: `run` writing JSON Lines to a file, and a worker running it as a file job
# whose records go to JetStream (a nats-server started here on 127.0.0.1, store in a temp folder).
# Prints each run's fps and the means.
#
#   scripts/fleet-overhead.sh [CLIP] [N]    # default: the shared one-by-one clip, 5 times
set -euo pipefail
cd "$(dirname "$0")/.."
clip=${1:-../shared/data/video/intel_one-by-one-person-detection.mp4}
n=${2:-5}
bin=target/release/faceflow
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -x .nats/bin/nats-server ] || { echo "run scripts/deps.sh first (nats-server)" >&2; exit 1; }
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.nats/bin/nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir/store" > "$dir/nats.log" 2>&1 &
nats=$!
trap 'kill $nats ${worker:-} 2>/dev/null; rm -rf "$dir"' EXIT
export FACEFLOW_NATS=nats://127.0.0.1:$port
sleep 1
"$bin" -v worker --name overhead > "$dir/worker.log" 2>&1 &
worker=$!
sleep 2
for _ in $(seq "$n"); do
  "$bin" run --input "$clip" --json "$dir/run.jsonl" 2>&1 | grep -o '[0-9.]* fps' | sed 's/^/run: /'
  id=$("$bin" fleet submit "$clip")
  until grep -q "job $id done\|job $id failed" "$dir/worker.log"; do sleep 0.5; done
  grep "job $id: stream" "$dir/worker.log" | grep -o '[0-9.]* fps' | sed 's/^/worker: /'
done | tee "$dir/fps" 
awk '{s[$1]+=$2; n[$1]++} END {for (k in s) printf "%s mean %.1f fps over %d\n", k, s[k]/n[k], n[k]}' "$dir/fps"
kill -TERM "$worker"; wait "$worker" || true
