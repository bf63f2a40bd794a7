#!/usr/bin/env bash
# The training grid (gradients x recipes, several seeds) behind the defaults of DEQ, the
# models and the CLI. Each argument names one run, TASK/VARIANT:SEED, with TASK/VARIANT.toml
# a config in this folder. Every run goes through the CLI, is resumable (a finished run is
# skipped, an interrupted one continues from its checkpoint) and writes into
# $OUT/TASK/VARIANT-seedSEED: run/ (the training run) and eval-D.json (held-out accuracy at
# longer lengths with more iterations, prefix sums only). Runs are independent, so two
# shells can share a list.
#
#   OMP_NUM_THREADS=1 bash experiments/training/run.sh prefix16/phantom:0 digits/implicit_fb:1
#   .venv/bin/python experiments/training/summarize.py      # the tables of docs/results.md
#
# Environment: OUT (default runs/experiments/training), DEQKIT (default .venv/bin/deqkit).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEQKIT=${DEQKIT:-.venv/bin/deqkit}
OUT=${OUT:-runs/experiments/training}
source experiments/lib.sh
# Test lengths and budgets per task: "difficulty:max_iter ..." (about 2-4 evaluations per bit).
declare -A TESTS=(
    [prefix16]="32:100 64:200"
    [prefix32]="64:200 128:500"
)
for spec in "$@"; do
    name=${spec%%:*}
    seed=${spec##*:}
    task=${name%%/*}
    config="experiments/training/$name.toml"
    [ -f "$config" ] || { echo "run.sh: no config $config (from $spec)" >&2; exit 2; }
    run="$OUT/$name-seed$seed"
    if [ -f "$run/done" ]; then echo "done: $run"; continue; fi
    echo "== $run ($(date -u +%H:%M:%S))"
    train_or_resume "$config" "$seed" "$run/run" "$run/run/trained"
    for test in ${TESTS[$task]:-}; do
        d=${test%%:*}
        eval_json "$run/eval-$d.json" "$run/run/checkpoint.pt" --difficulty "$d" \
            --max-iter "${test##*:}" --n 300
    done
    touch "$run/done"
    echo "== finished $run ($(date -u +%H:%M:%S))"
done
