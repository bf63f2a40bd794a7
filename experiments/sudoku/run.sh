#!/usr/bin/env bash
# Sudoku, easy to hard: train on boards with 30 blanks, test at 30, 40, 45 and 50 blanks with
# budgets up to 300 evaluations (sweep.json), ask the trained model about its intermediate
# iterates (examine/), and compare per-board adaptive stopping (tol 1e-3 within 300
# evaluations) with a fixed budget of about the same mean evaluations (adaptive-D.json,
# fixed-D.json). `python experiments/sudoku/summarize.py` prints the tables. Each argument names one run, VARIANT:SEED, with VARIANT one
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
source experiments/lib.sh
for spec in "$@"; do
    IFS=: read -r name seed <<<"$spec"
    config="experiments/sudoku/$name.toml"
    [ -f "$config" ] || { echo "run.sh: no config $config (from $spec)" >&2; exit 2; }
    run="$OUT/$name-seed$seed"
    echo "== $run ($(date -u +%H:%M:%S))"
    train_or_resume "$config" "$seed" "$run/run" "$run/run/done"
    if [ ! -f "$run/sweep.json" ]; then
        "$DEQKIT" sweep "$run/run/checkpoint.pt" --difficulties 30,40,45,50 \
            --iterations 1,2,5,10,20,30,50,100,200,300 --n "$N" --batch-size 25 --out "$run"
    fi
    if [ ! -f "$run/examine/examine.json" ]; then
        "$DEQKIT" examine "$run/run/checkpoint.pt" --difficulties 30,40,45 --n 50 \
            --tol 1e-3 --max-iter 100 --readout-iters 100 --batch-size 25 --out "$run/examine"
    fi
    for d in 30 40 45 50; do
        eval_json "$run/adaptive-$d.json" "$run/run/checkpoint.pt" --difficulty "$d" --n "$N" \
            --tol 1e-3 --max-iter 300
        # Every board runs the adaptive solves' mean evaluations, rounded up (tol 1e-12 is
        # never met in float32, so nothing stops early).
        budget=$(python3 -c "import json, math; print(math.ceil(json.load(open('$run/adaptive-$d.json'))['iters_mean']))")
        eval_json "$run/fixed-$d.json" "$run/run/checkpoint.pt" --difficulty "$d" --n "$N" \
            --tol 1e-12 --max-iter "$budget"
    done
    echo "== finished $run ($(date -u +%H:%M:%S))"
done
