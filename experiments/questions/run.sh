#!/usr/bin/env bash
# The questions behind DEQs (issue experiments 3-6), asked of every trained model: run
# `deqkit examine` on each finished run under the given folders, then summarise across
# models. Per run it measures, per test sample: the model's solver against plain iteration,
# forward and backward (adjoint); the spectral radius and norm of df/dz at z*; the path-
# independence score; and the readout at every iterate (best iterate against the fixed
# point, limit cycles). Prefix sums are examined at the training length and 4x it, mazes at
# 9x9 and 13x13, with budgets of max(200, 12 x training length) evaluations (300 for mazes)
# for every solve and for the readout at every iterate. Resumable: a run with
# examine/examine.json is skipped.
#
#   bash experiments/questions/run.sh [RUNS_ROOT...]
#
# Environment: N (samples per difficulty, default 50), DEQKIT (default .venv/bin/deqkit).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEQKIT=${DEQKIT:-.venv/bin/deqkit}
PYTHON=${PYTHON:-.venv/bin/python}
N=${N:-50}
ROOTS=${*:-runs/experiments/prefix_sums runs/experiments/prefix_sums_32 runs/experiments/mazes}
for root in $ROOTS; do
    for ckpt in "$root"/*/run/checkpoint.pt; do
        [ -f "$ckpt" ] || continue
        run=$(dirname "$(dirname "$ckpt")")
        [ -f "$run/sweep.json" ] || { echo "not finished, skipped: $run"; continue; }
        [ -f "$run/examine/examine.json" ] && { echo "done: $run"; continue; }
        # Test at the training size and 4x it (mazes: 9x9 and 13x13), with a budget that lets
        # the larger size converge: about three evaluations per bit.
        read -r diffs budget < <("$PYTHON" -c "import json,sys; c=json.load(open(sys.argv[1])); \
d=c['difficulty']; p=c['task']=='prefix_sums'; \
print(f'{d},{4*d}' if p else '9,13', max(200, 12*d) if p else 300)" "$run/run/config.json")
        echo "== examine $run at $diffs, budget $budget ($(date -u +%H:%M:%S))"
        "$DEQKIT" examine "$ckpt" --difficulties "$diffs" --n "$N" --max-iter "$budget" \
            --readout-iters "$budget" --batch-size 25 --out "$run/examine"
    done
done
"$PYTHON" experiments/questions/summarize.py $ROOTS
