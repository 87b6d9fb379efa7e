#!/usr/bin/env bash
# Second command of the README (and what CI runs): installs what is missing, then the whole test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/deps.sh
# Feature `train` builds the trainer (burn) too, so its smoke run and export parity are tested.
cargo test --locked --features train "$@"
