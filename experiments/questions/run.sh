#!/usr/bin/env bash
# The questions behind DEQs (issue experiments 3-6), asked of every trained model: run
# `deqkit examine` on each finished run under the given folders, then summarise across
# models. Per run it measures, per test sample: the model's solver against plain iteration,
# forward and backward (adjoint); the spectral radius and norm of df/dz at z*; the path-
# independence score; and the readout at every iterate (best iterate against the fixed
# point, limit cycles). Prefix sums are examined at the training length and 4x it, mazes at
# 9x9 and 13x13. Resumable: a run with examine/examine.json is skipped.
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
        diffs=$("$PYTHON" -c "import json,sys; c=json.load(open(sys.argv[1])); \
d=c['difficulty']; print(f'{d},{4*d}' if c['task']=='prefix_sums' else '9,13')" \
            "$run/run/config.json")
        echo "== examine $run at $diffs ($(date -u +%H:%M:%S))"
        "$DEQKIT" examine "$ckpt" --difficulties "$diffs" --n "$N" --max-iter 200 \
            --readout-iters 150 --batch-size 25 --out "$run/examine"
    done
done
"$PYTHON" experiments/questions/summarize.py $ROOTS
