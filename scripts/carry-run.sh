#!/usr/bin/env bash
# Carries a training run of `faceflow train` across machines through the repository.
#
# Run folders (runs/) are not committed, and a session may start on a new machine that has only what
# landed on main: a 30-epoch run (about 3 hours on 2 cores) would start over. This copies what
# `--resume` needs (state.json, model.bpk, optim.bpk), best.bpk for `--export-only --best`, and the
# networks kept for weight averaging to models/checkpoints/RUN/ (to be committed), and back. The
# crop cache and the teachers' targets are not carried: the trainer computes them again. Delete the
# folder once the run's model has shipped.
#
#   scripts/carry-run.sh save RUN [FIRST_AVERAGED_EPOCH]   # default 25: epoch-25.bpk … are kept
#   scripts/carry-run.sh restore RUN
#
# Stop the run before saving (Ctrl-C saves a checkpoint): a save that sees the files change refuses.
# restore refuses a run folder that already holds a checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "carry-run: $*" >&2
    exit 1
}
usage() {
    echo "usage: scripts/carry-run.sh save RUN [FIRST_AVERAGED_EPOCH] | restore RUN" >&2
    exit 2
}
[ $# -ge 2 ] || usage
action=$1
run=$2
case "$run" in
*/* | "" | . | .. | .*) echo "carry-run: RUN is a run folder's name under runs/, got '$run'" >&2; exit 2 ;;
esac
live=runs/$run
carried=models/checkpoints/$run

# The step a checkpoint reached (state.json's "step").
step_of() {
    python3 -c '
import json, sys
try:
    print(int(json.load(open(sys.argv[1]))["step"]))
except Exception as e:
    sys.exit(f"carry-run: {sys.argv[1]} is not a run state: {e}")
' "$1/state.json"
}

case "$action" in
save)
    first=${3:-25}
    [[ "$first" =~ ^[0-9]+$ ]] || { echo "carry-run: FIRST_AVERAGED_EPOCH must be a number, got '$first'" >&2; exit 2; }
    for f in state.json model.bpk optim.bpk; do
        [ -f "$live/$f" ] || fail "$live/$f is missing: nothing to save"
    done
    step=$(step_of "$live")
    files=(state.json model.bpk optim.bpk)
    [ -f "$live/best.bpk" ] && files+=(best.bpk)
    for f in "$live"/epoch-*.bpk; do
        [ -e "$f" ] || continue
        n=${f##*/epoch-}
        n=${n%.bpk}
        [[ "$n" =~ ^[0-9]+$ ]] || continue
        if [ $((10#$n)) -ge "$first" ]; then files+=("${f##*/}"); fi
    done
    # Copy beside the carried folder, check nothing moved meanwhile, then swap: a failed or
    # interrupted save leaves the previous carried state whole and no partial copy behind.
    mkdir -p models/checkpoints
    tmp=$(mktemp -d "models/checkpoints/.$run.new.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    for f in "${files[@]}"; do cp "$live/$f" "$tmp/"; done
    for f in "${files[@]}"; do
        cmp -s "$live/$f" "$tmp/$f" ||
            fail "$live/$f changed while it was copied: stop the run first (Ctrl-C saves a checkpoint)"
    done
    if [ -d "$carried" ]; then
        old=$(mktemp -d "models/checkpoints/.$run.old.XXXXXX")
        mv "$carried" "$old/"
        mv "$tmp" "$carried"
        rm -rf "$old"
    else
        mv "$tmp" "$carried"
    fi
    trap - EXIT
    echo "carry-run: saved $live (step $step) to $carried: ${files[*]}; commit it"
    ;;
restore)
    [ -f "$carried/state.json" ] || fail "no carried run at $carried"
    step=$(step_of "$carried")
    [ -e "$live/state.json" ] && fail "$live already holds a checkpoint (step $(step_of "$live")): left as it is"
    mkdir -p "$live"
    cp "$carried"/* "$live/"
    echo "carry-run: restored $live at step $step; resume with: faceflow train --source DIR --out $live --resume (and its --epochs if not 30; the rest comes from its state.json)"
    ;;
*) usage ;;
esac
