#!/usr/bin/env bash
# Memory of a DEQ against explicit deep networks of equal accuracy (issue experiment 7):
# train the multiscale conv DEQ (phantom gradient) and its explicit twins of depth 1, 2, 4
# and 8 on digits for each seed, and the DEQ with the implicit gradient (the model's default,
# which trains poorly here) for the first seed; then measure the peak memory of one training
# step of each (measure.py).
# Resumable: finished runs are skipped.
#
#   bash experiments/memory/run.sh [SEEDS...]        (default seeds 0 1 2)
#
# Environment: OUT (default runs/experiments/memory), DEQKIT, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEQKIT=${DEQKIT:-.venv/bin/deqkit}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/experiments/memory}
SEEDS=${*:-0 1 2}
train() {  # name config seed [--set ...]
    local run="$OUT/$1-seed$3" config=$2 seed=$3
    shift 3
    if [ -f "$run/done" ]; then echo "done: $run"; return; fi
    echo "== $run ($(date -u +%H:%M:%S))"
    if [ -f "$run/checkpoint.pt" ]; then
        "$DEQKIT" train --resume "$run" --no-progress
    else
        "$DEQKIT" train --config "$config" --seed "$seed" --out-dir "$run" --no-progress "$@"
    fi
    touch "$run/done"
}
first=${SEEDS%% *}
train deq_implicit experiments/memory/deq_implicit.toml "$first"
for seed in $SEEDS; do
    train deq_phantom experiments/memory/deq_phantom.toml "$seed"
    for depth in 1 2 4 8; do
        train "explicit_d$depth" experiments/memory/explicit.toml "$seed" \
            --set "model_kwargs={\"depth\": $depth}"
    done
done
"$PYTHON" experiments/memory/measure.py "$OUT"
