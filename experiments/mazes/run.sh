#!/usr/bin/env bash
# Mazes, small to large: train on 9x9 mazes, test on 9x9, 13x13 and 17x17 with budgets up to
# 300 evaluations (`experiments/questions/run.sh` then examines the trained models).
# Each argument names one run, VARIANT:SEED, with VARIANT one of the *.toml files here.
# Resumable: a finished stage is skipped, an interrupted training continues from its
# checkpoint.
#
#   bash experiments/mazes/run.sh deq_phantom:0
#
# Environment: OUT (default runs/experiments/mazes), N (test mazes per size, default 100),
# DEQKIT (default .venv/bin/deqkit).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEQKIT=${DEQKIT:-.venv/bin/deqkit}
OUT=${OUT:-runs/experiments/mazes}
N=${N:-100}
source experiments/lib.sh
for spec in "$@"; do
    IFS=: read -r name seed <<<"$spec"
    config="experiments/mazes/$name.toml"
    [ -f "$config" ] || { echo "run.sh: no config $config (from $spec)" >&2; exit 2; }
    run="$OUT/$name-seed$seed"
    echo "== $run ($(date -u +%H:%M:%S))"
    train_or_resume "$config" "$seed" "$run/run" "$run/run/done"
    if [ "$name" = recurrent ]; then solver=(--solver picard --pick last); else solver=(); fi
    if [ ! -f "$run/sweep.json" ]; then
        "$DEQKIT" sweep "$run/run/checkpoint.pt" --difficulties 9,13,17 \
            --iterations 1,2,5,10,20,30,50,100,200,300 --n "$N" --batch-size 25 \
            "${solver[@]}" --out "$run"
    fi
    echo "== finished $run ($(date -u +%H:%M:%S))"
done
