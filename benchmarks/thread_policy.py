"""FastViTHD latency at one thread count, quiet or beside busy loops: the figures behind the thread
policy (docs/benchmarks.md, "Thread policy").

    python benchmarks/thread_policy.py --threads 2 --rounds 5 [--neighbours 1]
    OMP_WAIT_POLICY=PASSIVE python benchmarks/thread_policy.py --threads 2 --neighbours 1

Nine settings (width 0.5/0.75/1.0 x 256/384/512 px), all built first, then timed in shuffled
rounds (one forward each per round); prints the median, min and max per setting and the load
average. Run each column as its own process (OpenMP reads its wait policy once, at start-up).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

from explorer.engine.stability import busy_neighbours
from explorer.models import build_encoder

SETTINGS = [(w, r) for w in (0.5, 0.75, 1.0) for r in (256, 384, 512)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--neighbours", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    for w, r in SETTINGS:
        m = build_encoder("fastvithd", width_mult=w)
        m.reparameterize()
        models[(w, r)] = (m.eval(), torch.randn(1, 3, r, r))
    rng = random.Random(args.seed)
    samples: dict[tuple[float, int], list[float]] = {s: [] for s in SETTINGS}
    with busy_neighbours(args.neighbours), torch.inference_mode():
        for m, x in models.values():
            m(x)
        for _ in range(args.rounds):
            order = list(SETTINGS)
            rng.shuffle(order)
            for s in order:
                m, x = models[s]
                t0 = time.perf_counter()
                m(x)
                samples[s].append((time.perf_counter() - t0) * 1e3)
        load = os.getloadavg()
    print(f"threads={args.threads} neighbours={args.neighbours} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}")
    for (w, r), xs in samples.items():
        print(f"{w:g}@{r}: median {statistics.median(xs):.1f} ms, min {min(xs):.1f}, max {max(xs):.1f}")
    print("load average (end): " + " ".join(f"{v:.2f}" for v in load))


if __name__ == "__main__":
    main()
