#!/usr/bin/env bash
# Sudoku, easy to hard: train on boards with 30 blanks, test at 30, 40, 45 and 50 blanks with
# budgets up to 300 evaluations. Each argument names one run, VARIANT:SEED, with VARIANT one
# of the *.toml files here. Resumable: a finished stage is skipped, an interrupted training
# continues from its checkpoint.
#
#   bash experiments/sudoku/run.sh deq_phantom:0
#
# Environment: OUT (default runs/experiments/sudoku), N (test boards per tier, default 100),
# DEQKIT (default .venv/bin/deqkit).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEQKIT=${DEQKIT:-.venv/bin/deqkit}
OUT=${OUT:-runs/experiments/sudoku}
N=${N:-100}
for spec in "$@"; do
    IFS=: read -r name seed <<<"$spec"
    config="experiments/sudoku/$name.toml"
    [ -f "$config" ] || { echo "run.sh: no config $config (from $spec)" >&2; exit 2; }
    run="$OUT/$name-seed$seed"
    echo "== $run ($(date -u +%H:%M:%S))"
    if [ -f "$run/run/checkpoint.pt" ] && [ ! -f "$run/run/done" ]; then
        "$DEQKIT" train --resume "$run/run" --no-progress
    elif [ ! -f "$run/run/done" ]; then
        "$DEQKIT" train --config "$config" --seed "$seed" --out-dir "$run/run" --no-progress
    fi
    touch "$run/run/done"
    if [ ! -f "$run/sweep.json" ]; then
        "$DEQKIT" sweep "$run/run/checkpoint.pt" --difficulties 30,40,45,50 \
            --iterations 1,2,5,10,20,30,50,100,200,300 --n "$N" --batch-size 25 --out "$run"
    fi
    echo "== finished $run ($(date -u +%H:%M:%S))"
done
