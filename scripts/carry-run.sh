#!/usr/bin/env bash
# Carries a training run of `faceflow train` across machines through the repository.
#
# Run folders (runs/) are not committed, and a session may start on a new machine that has only what
# landed on main: a 30-epoch run (about 3 hours on 2 cores) then starts over. This copies what
# `--resume` needs, plus the networks kept for weight averaging, to models/checkpoints/RUN/ (to be
# committed), and back. Delete that folder once the run's model has shipped.
#
#   scripts/carry-run.sh save RUN [FIRST_AVERAGED_EPOCH]   # default 25: epoch-25.bpk … are kept
#   scripts/carry-run.sh restore RUN
#
# restore refuses to replace a run folder whose checkpoint is as far along or further.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: scripts/carry-run.sh save RUN [FIRST_AVERAGED_EPOCH] | restore RUN" >&2
    exit 2
}
[ $# -ge 2 ] || usage
action=$1
run=$2
case "$run" in
*/* | "" | . | ..) echo "carry-run: RUN is a run folder's name under runs/, got '$run'" >&2; exit 2 ;;
esac
live=runs/$run
carried=models/checkpoints/$run

# The step a checkpoint reached (state.json's "step"), or -1 without one.
step_of() {
    if [ -f "$1/state.json" ]; then
        python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$1/state.json"
    else
        echo -1
    fi
}

case "$action" in
save)
    first=${3:-25}
    [[ "$first" =~ ^[0-9]+$ ]] || { echo "carry-run: FIRST_AVERAGED_EPOCH must be a number, got '$first'" >&2; exit 2; }
    for f in state.json model.bpk optim.bpk; do
        [ -f "$live/$f" ] || { echo "carry-run: $live/$f is missing: nothing to save" >&2; exit 1; }
    done
    # Write beside, then swap: an interrupted save leaves the previous carried state whole.
    mkdir -p models/checkpoints
    tmp=$(mktemp -d "models/checkpoints/.$run.XXXXXX")
    cp "$live/state.json" "$live/model.bpk" "$live/optim.bpk" "$tmp/"
    kept=()
    for f in "$live"/epoch-*.bpk; do
        [ -e "$f" ] || continue
        n=${f##*/epoch-}
        n=${n%.bpk}
        if [ "$n" -ge "$first" ]; then
            cp "$f" "$tmp/"
            kept+=("epoch-$n.bpk")
        fi
    done
    rm -rf "$carried"
    mv "$tmp" "$carried"
    echo "carry-run: saved $live (step $(step_of "$carried")) to $carried${kept:+ with ${kept[*]}}; commit it"
    ;;
restore)
    [ -f "$carried/state.json" ] || { echo "carry-run: no carried run at $carried" >&2; exit 1; }
    have=$(step_of "$live")
    want=$(step_of "$carried")
    if [ "$have" -ge "$want" ]; then
        echo "carry-run: $live is at step $have, the carried state at $want: left as it is" >&2
        exit 1
    fi
    mkdir -p "$live"
    cp "$carried"/* "$live/"
    echo "carry-run: restored $live at step $want; resume with: faceflow train --source DIR --out $live --resume"
    ;;
*) usage ;;
esac
