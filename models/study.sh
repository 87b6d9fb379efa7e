#!/usr/bin/env bash
# The study's comparison on faceflow's own validation split: tasks {age, age+gender, age+gender+race}
# and the multi-source setting (half the training images with age+gender labels only, half with race
# only). One fine-age model serves 3, 5 and 10 groups, so each run fills one row for all groupings.
# Every run resumes where it stopped, and a run already trained and scored is skipped: re-run this
# script until it prints the tables. The next tables compare every row with "age only", and
# multi-source with age+gender+race, image by image (models/compare_evals.py: paired differences,
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
  "$bin" eval --source "$data" --split validation --model "$out/faceattr.onnx" \
    --report "$out/eval" > "$out/eval.txt"
}
run age --tasks age
run age-gender --tasks age,gender
run age-gender-race --tasks age,gender,race
run multi-source --tasks age,gender,race --simulate-multi-source
printf '| tasks | age 3 | age 5 | age 10 | MAE | gender | race |\n|---|---|---|---|---|---|---|\n'
for name in age age-gender age-gender-race multi-source; do
  python3 - "$name" "runs/study-$name/eval/report.json" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
report = json.load(open(path))
t, tasks = report["tally"], report["spec"]["tasks"]
def acc(c):
    total = sum(map(sum, c["counts"])) + sum(c["missed"])
    return sum(c["counts"][i][i] for i in range(len(c["labels"]))) / total
ages = {n: acc(c) for n, c in t["age"]}
mae = t["age_abs_error_sum"] / max(t["age_count"], 1)
head = lambda task: f"{acc(t[task]):.3f}" if task in tasks else "—"
print(f"| {name} | {ages[3]:.3f} | {ages[5]:.3f} | {ages[10]:.3f} | {mae:.2f} | {head('gender')} | {head('race')} |")
PY
done
echo
python3 models/compare_evals.py runs/study-age/eval \
  runs/study-age-gender/eval runs/study-age-gender-race/eval runs/study-multi-source/eval
echo
python3 models/compare_evals.py runs/study-age-gender-race/eval runs/study-multi-source/eval
