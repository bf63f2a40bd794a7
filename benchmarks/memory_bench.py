"""Memory benchmark: one DEQ training step against unrolled and explicit networks.

Same as ``deqkit mem-bench``: peak memory (exact, from tracked tensor storage) and median
time of one forward + backward step of deqkit's DEQ (implicit gradient), the same
weight-tied layer unrolled with autograd, an explicit network of that depth with untied
weights, and torchdeq's DEQ when installed, at 5, 10, 20, 40 and 80 forward iterations;
prints a table and the PASS/FAIL lines of the targets and writes ``mem_bench.md``,
``mem_bench.json`` and ``mem_bench.png`` to ``--out`` (default ``bench-out``).

    python benchmarks/memory_bench.py
    python benchmarks/memory_bench.py --device cuda --out bench-out/cuda
"""

import sys

from deqkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["mem-bench", *sys.argv[1:]]))
