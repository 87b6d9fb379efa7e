#!/usr/bin/env bash
# The study's comparison on faceflow's own validation split: tasks {age, age+gender, age+gender+race}
# and the multi-source setting (half the training images with age+gender labels only, half with race
# only). One fine-age model serves 3, 5 and 10 groups, so each run fills one row for all groupings.
# Every run resumes where it stopped, and a run already trained and scored is skipped: re-run this
# script until it prints the tables (models/compare_evals.py): each run's numbers, then every run
# against "age only", and multi-source against age+gender+race, image by image (paired differences,
# McNemar p).
#
#   models/study.sh [EPOCHS]      (default 6; about 12 min an epoch on 2 cores)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
epochs=${1:-6}
data=../shared/data/utkface
# The test-profile build is optimised and shares its build of burn with `cargo test --features
# train` (a plain `cargo build --features train` resolves features differently and rebuilds burn).
bin=target/debug/faceflow
cargo test --locked --features train --no-run --quiet
run() { # name, extra flags...
  local name=$1; shift
  local out=runs/study-$name
  if [ -f "$out/eval/predictions.jsonl" ] && [ "$out/eval/predictions.jsonl" -nt "$out/faceattr.onnx" ]; then
    echo "study: $name already trained and scored ($out/eval)" >&2
    return
  fi
  local resume=(); [ -f "$out/state.json" ] && resume=(--resume)
  "$bin" train --source "$data" --out "$out" --epochs "$epochs" "${resume[@]}" "$@"
  # The model alone: faceres (on by default since) would blend its gender in.
  "$bin" eval --source "$data" --split validation --model "$out/faceattr.onnx" --faceres false \
    --report "$out/eval" > "$out/eval.txt"
}
run age --tasks age
run age-gender --tasks age,gender
run age-gender-race --tasks age,gender,race
run multi-source --tasks age,gender,race --simulate-multi-source
python3 models/compare_evals.py runs/study-age/eval \
  runs/study-age-gender/eval runs/study-age-gender-race/eval runs/study-multi-source/eval
echo
python3 models/compare_evals.py runs/study-age-gender-race/eval runs/study-multi-source/eval
