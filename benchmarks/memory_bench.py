"""Memory and step-time benchmark: one DEQ training step against torchdeq's and unrolled nets.

Same as ``deqkit mem-bench``: peak memory (exact, from tracked tensor storage) and median
time of one training step (forward, loss, backward to the parameters) of deqkit's DEQ with
the implicit and with the phantom gradient, torchdeq's DEQ with the same two gradients at
the same iteration counts (forward and adjoint; when installed), the same weight-tied layer
unrolled with autograd and an explicit network of that depth with untied weights, at 5, 10,
20, 40 and 80 forward iterations; the timed steps are interleaved across methods. Prints a
table and the PASS/FAIL lines of the targets (memory flat and below torchdeq's; step time
at most 0.8 of torchdeq's at 20 and 80 iterations) and writes ``mem_bench.md``,
``mem_bench.json`` and ``mem_bench.png`` to ``--out`` (default ``bench-out``).

    python benchmarks/memory_bench.py --threads 1
    python benchmarks/memory_bench.py --threads 1 --clock cpu     # on a shared machine
    python benchmarks/memory_bench.py --device cuda --out bench-out/cuda
"""

import sys

from deqkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["mem-bench", *sys.argv[1:]]))
