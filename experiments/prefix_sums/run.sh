#!/usr/bin/env bash
# Prefix sums, easy to hard, at demo scale: five variants of the recall network trained on
# 16-bit strings (400 steps, width 32), each tested on 16-128 bits at solver budgets up to
# 200, three seeds. Resumable: a finished run is skipped, an interrupted one continues from
# its checkpoint. Usage: bash experiments/prefix_sums/run.sh [OUT] [SEEDS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
DEQKIT=${DEQKIT:-.venv/bin/deqkit}
OUT=${1:-runs/experiments/prefix_sums}
shift || true
SEEDS=${*:-0 1 2}
for name in deq_phantom deq_implicit deq_no_recall deq_spectral_norm recurrent; do
    solver=$([ "$name" = recurrent ] && echo picard || echo anderson)
    for seed in $SEEDS; do
        run="$OUT/$name-seed$seed"
        if [ -f "$run/sweep.json" ]; then echo "done: $run"; continue; fi
        if [ -f "$run/run/checkpoint.pt" ]; then
            "$DEQKIT" train --resume "$run/run" --no-progress
        else
            "$DEQKIT" train --config "experiments/prefix_sums/$name.toml" --set "seed=$seed" \
                --out-dir "$run/run" --no-progress
        fi
        "$DEQKIT" sweep "$run/run/checkpoint.pt" --difficulties 16,32,64,128 \
            --iterations 1,2,5,10,20,30,50,100,200 --n 300 --solver "$solver" --out "$run"
    done
done
python3 experiments/summarize.py "$OUT"
