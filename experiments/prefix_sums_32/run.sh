#!/usr/bin/env bash
# Prefix sums at the issue's scale: train on 32-bit strings (800 steps), test on 32-512 bits
# with budgets up to 500 evaluations. Each argument names one run, VARIANT:WIDTH:SEED, with
# VARIANT one of the *.toml files here. Resumable: a finished run is skipped, an interrupted
# one continues from its checkpoint. Runs are independent, so two shells can share the list.
#
#   bash experiments/prefix_sums_32/run.sh deq_spectral_norm:64:0 recurrent:64:0
#
# Environment: OUT (default runs/experiments/prefix_sums_32), N (test strings per length,
# default 200), DEQKIT (default .venv/bin/deqkit).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEQKIT=${DEQKIT:-.venv/bin/deqkit}
OUT=${OUT:-runs/experiments/prefix_sums_32}
N=${N:-200}
for spec in "$@"; do
    IFS=: read -r name width seed <<<"$spec"
    config="experiments/prefix_sums_32/$name.toml"
    [ -f "$config" ] || { echo "run.sh: no config $config (from $spec)" >&2; exit 2; }
    run="$OUT/$name-w$width-seed$seed"
    if [ -f "$run/sweep.json" ]; then echo "done: $run"; continue; fi
    echo "== $run ($(date -u +%H:%M:%S))"
    if [ -f "$run/run/checkpoint.pt" ] && [ ! -f "$run/run/done" ]; then
        "$DEQKIT" train --resume "$run/run" --no-progress
    elif [ ! -f "$run/run/done" ]; then
        "$DEQKIT" train --config "$config" --width "$width" --seed "$seed" \
            --out-dir "$run/run" --no-progress
    fi
    touch "$run/run/done"
    if [ "$name" = recurrent ]; then solver=(--solver picard --pick last); else solver=(); fi
    "$DEQKIT" sweep "$run/run/checkpoint.pt" --difficulties 32,64,128,256,512 \
        --iterations 1,2,5,10,20,30,50,100,200,300,500 --n "$N" --batch-size 25 \
        "${solver[@]}" --out "$run"
    echo "== finished $run ($(date -u +%H:%M:%S))"
done
