"""A real model's training step with Anderson's eager step against its native solve.

The prefix16 protocol's model (``experiments/training/prefix16/phantom.toml``: ``recall1d``
width 32, two blocks, group norm; Anderson to ``1e-3`` within 30 evaluations, the phantom
gradient) on one batch of 64 16-bit strings, with ``Anderson()`` and ``Anderson(native=True)``
as the forward solver, same initial weights. Interleaved rounds (each variant 20 steps per
round), this thread's CPU time at one torch thread, medians per round:

* ``step``: forward (the solve, then the phantom steps with autograd), loss, backward;
* ``forward``: the layer under ``torch.no_grad()`` (the solve alone, as at evaluation).

The weights are not updated, so every step solves the same problem (the untrained model's).

    python benchmarks/native_step.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from deqkit.models import RecallNet
from deqkit.solvers import Anderson
from deqkit.tasks import prefix_sums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = prefix_sums(64, 16, seed=0)
    models = {}
    for name, native in (("eager", False), ("native", True)):
        torch.manual_seed(0)
        models[name] = RecallNet.for_prefix_sums(
            width=32,
            num_blocks=2,
            norm_groups=4,
            solver=Anderson(native=native),
            tol=1e-3,
            max_iter=30,
            backward="phantom",
        )

    def step(model: RecallNet) -> None:
        logits, _ = model(x)  # (logits, DEQInfo)
        F.cross_entropy(logits, y.long()).backward()

    def forward(model: RecallNet) -> None:
        with torch.no_grad():
            model(x)

    def timed(fn, model) -> float:
        t = time.thread_time()
        fn(model)
        return time.thread_time() - t

    for model in models.values():  # warm-up (and the extension's build)
        for _ in range(3):
            step(model)
    print("| round | eager step ms | native step ms | ratio | eager forward ms | "
          "native forward ms | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in range(args.rounds):
        med = {}
        for name, model in models.items():
            steps = [timed(step, model) for _ in range(20)]
            fwd = [timed(forward, model) for _ in range(20)]
            med[name] = (statistics.median(steps) * 1e3, statistics.median(fwd) * 1e3)
        (es, ef), (ns, nf) = med["eager"], med["native"]
        print(f"| {r} | {es:.1f} | {ns:.1f} | {ns / es:.2f} | {ef:.1f} | {nf:.1f} | "
              f"{nf / ef:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
