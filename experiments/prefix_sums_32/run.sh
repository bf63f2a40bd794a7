#!/usr/bin/env bash
# Prefix sums at the issue's scale: train on 32-bit strings (800 steps), test on 32-512 bits
# with budgets up to 500 evaluations. Each argument names one run, VARIANT:WIDTH:SEED, with
# VARIANT one of the *.toml files here. Resumable: a finished run is skipped, an interrupted
# one continues from its checkpoint. Runs are independent, so two shells can share the list.
#
#   bash experiments/prefix_sums_32/run.sh deq_spectral_norm:64:0 recurrent:64:0
#
# Where a model solves 256-bit strings within 500 evaluations, 512-bit strings are also swept
# with budgets up to 2000 (into RUN/long).
#
# Environment: OUT (default runs/experiments/prefix_sums_32), N (test strings per length,
# default 200), N_LONG (512-bit strings for the long budgets, default 100), DEQKIT (default
# .venv/bin/deqkit), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEQKIT=${DEQKIT:-.venv/bin/deqkit}
OUT=${OUT:-runs/experiments/prefix_sums_32}
N=${N:-200}
N_LONG=${N_LONG:-100}
PYTHON=${PYTHON:-.venv/bin/python}
for spec in "$@"; do
    IFS=: read -r name width seed <<<"$spec"
    config="experiments/prefix_sums_32/$name.toml"
    [ -f "$config" ] || { echo "run.sh: no config $config (from $spec)" >&2; exit 2; }
    run="$OUT/$name-w$width-seed$seed"
    if [ -f "$run/sweep.json" ] && [ -f "$run/long.done" ]; then echo "done: $run"; continue; fi
    echo "== $run ($(date -u +%H:%M:%S))"
    if [ -f "$run/run/checkpoint.pt" ] && [ ! -f "$run/run/done" ]; then
        "$DEQKIT" train --resume "$run/run" --no-progress
    elif [ ! -f "$run/run/done" ]; then
        "$DEQKIT" train --config "$config" --width "$width" --seed "$seed" \
            --out-dir "$run/run" --no-progress
    fi
    touch "$run/run/done"
    if [ "$name" = recurrent ]; then solver=(--solver picard --pick last); else solver=(); fi
    if [ ! -f "$run/sweep.json" ]; then
        "$DEQKIT" sweep "$run/run/checkpoint.pt" --difficulties 32,64,128,256,512 \
            --iterations 1,2,5,10,20,30,50,100,200,300,500 --n "$N" --batch-size 25 \
            "${solver[@]}" --out "$run"
    fi
    # Beyond the issue's 500: where a model solves 256-bit strings, how many evaluations do
    # 512-bit strings need? (Anderson needs about two evaluations per bit here.)
    if [ ! -f "$run/long/sweep.json" ] && "$PYTHON" -c "import json,sys; \
c=json.load(open(sys.argv[1]))['256']; sys.exit(0 if c['metric'][-1] >= 0.5 else 1)" \
        "$run/sweep.json"; then
        "$DEQKIT" sweep "$run/run/checkpoint.pt" --difficulties 512 \
            --iterations 500,750,1000,1500,2000 --n "$N_LONG" --batch-size 25 \
            "${solver[@]}" --out "$run/long"
    fi
    touch "$run/long.done"
    echo "== finished $run ($(date -u +%H:%M:%S))"
done
