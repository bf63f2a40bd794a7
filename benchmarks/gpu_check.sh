#!/usr/bin/env bash
# Issue 12's GPU checks in one run, for a session that is lent a GPU machine (15 minutes of
# device time in all: run this once, read what comes back, give the machine back):
#
#   bash benchmarks/gpu_check.sh                 # the device tool's run: $OUT receives it
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh   # the pipeline, here, in a minute
#
# It installs nothing (that machine reaches no network): deqkit runs from src/ through
# PYTHONPATH with the python3 there, whose torch sees the GPU; torchdeq is not there, so
# the benchmarks skip its columns and its targets. It runs, each under its own timeout:
#   1. `pytest -m gpu`: counts, statuses, per-sample stopping, NaN isolation, half-precision
#      f with a float32 state, the DEQ's forward and gradients, all against the CPU result;
#   2. `deqkit solve-bench --device cuda`: every solver on the six benchmark problems;
#   3. the same with `--graph 8`: anderson and picard as `Graphed(steps=8)`, eight steps per
#      CUDA graph replay and host read (compare its times with 2's, same machine);
#   4. `deqkit mem-bench --device cuda`: a training step's time and peak memory.
# Into $OUT (default gpu-out/), at most 10 plain files: device.txt, test_gpu.txt,
# solve_bench.txt, solver_bench.md, solver_bench.json, solve_bench_graph.txt,
# solver_bench_graph.md, mem_bench.txt, mem_bench.md, mem_bench.json. The exit status is 0
# when all four ran to the end and the tests passed (the benchmarks' PASS/FAIL lines are in
# their .txt files and printed at the end).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

{
    date -u
    nvidia-smi -L 2>&1 || echo "no nvidia-smi"
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
    nproc
} > "$OUT/device.txt" 2>&1
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: torch sees no CUDA device (device.txt says what it found); DEVICE=cpu runs the pipeline" >&2
    exit 2
fi

quick=()
[ -n "$QUICK" ] && quick=(--quick)
rc=0
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/test_gpu.txt" 2>&1 || rc=1
timeout 120 "$PY" -m deqkit.cli solve-bench --device "$DEVICE" --out "$scratch" --no-progress \
    "${quick[@]}" > "$OUT/solve_bench.txt" 2>&1 || rc=1
timeout 120 "$PY" -m deqkit.cli solve-bench --device "$DEVICE" --out "$scratch/graph" \
    --no-progress --graph 8 "${quick[@]}" > "$OUT/solve_bench_graph.txt" 2>&1 || rc=1
timeout 100 "$PY" -m deqkit.cli mem-bench --device "$DEVICE" --iterations 20,80 --out "$scratch" \
    > "$OUT/mem_bench.txt" 2>&1 || rc=1
cp "$scratch"/solver_bench.md "$scratch"/solver_bench.json "$scratch"/mem_bench.md \
    "$scratch"/mem_bench.json "$OUT"/ 2>/dev/null
cp "$scratch"/graph/solver_bench.md "$OUT"/solver_bench_graph.md 2>/dev/null
for f in test_gpu solve_bench solve_bench_graph mem_bench; do
    echo "== $f"
    grep -E "passed|failed|skipped|error|FAIL|PASS" "$OUT/$f.txt" | tail -40
done
exit $rc
