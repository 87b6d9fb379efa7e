#!/bin/bash
# Trains the teacher members on one GPU machine in one go: a smoke test first (fails fast), then
# all members at once (small nets leave a large GPU idle when run one at a time). Weights and the
# log go to OUT.
#   models/teacher/gpu_run.sh DATA_DIR OUT BUDGET_S [MEMBERS]
#     MEMBERS members on the trainer's training part and MEMBERS on every face (train-K.pt, all-K.pt)
#   models/teacher/gpu_run.sh DATA_DIR OUT BUDGET_S FOLDS folds
#     a cross-fitted set on the training part: member K never sees fold K of FOLDS (fold-K.pt)
set -u -o pipefail
data=$1; out=$2; budget=$3; members=${4:-3}; mode=${5:-plain}
here=$(dirname "$0")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
python3 "$here/train_teachers.py" "$data" /tmp/smoke.pt --split train --budget-s 30 --max-steps 5 --limit 600 --fold 1 --folds 2 || exit 3
member() { timeout $((budget + 120)) python3 "$here/train_teachers.py" "$data" "$@" --budget-s "$budget" >> "$out/log.txt" 2>&1; }
for s in $(seq 1 "$members"); do
  if [ "$mode" = folds ]; then
    member "$out/fold-$s.pt" --split train --seed $((s + 20)) --fold "$s" --folds "$members" &
  else
    member "$out/train-$s.pt" --split train --seed "$s" &
    member "$out/all-$s.pt" --split all --seed $((s + 10)) &
  fi
done
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
failed=0
for job in $(jobs -p); do wait "$job" || failed=$((failed + 1)); done
cat "$out/log.txt"
ls -la "$out"
if [ "$failed" -gt 0 ]; then echo "$failed member(s) failed" >&2; exit 1; fi
