"""How fast this machine is from one second to the next, with nothing else of ours running: a
FastViTHD forward pass, a GEMM and a streaming sum, timed in a loop (docs/benchmarks.md, "The
host's own speed").

    python benchmarks/host_drift.py --threads 2 --seconds 60
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from explorer.models import build_encoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_encoder("fastvithd", width_mult=0.5)
    model.reparameterize()
    model.eval()
    x = torch.randn(1, 3, 256, 256)
    a = torch.randn(1024, 1024)
    b = torch.randn(8_000_000)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        end = time.time() + args.seconds
        while time.time() < end:
            xs = []
            for _ in range(10):
                t0 = time.perf_counter()
                model(x)
                xs.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            a @ a
            gemm = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            (b * 2).sum()
            stream = (time.perf_counter() - t0) * 1e3
            print(f"{time.strftime('%H:%M:%S')} fastvithd median {statistics.median(xs):6.1f} ms  "
                  f"gemm {gemm:5.1f} ms  stream {stream:5.1f} ms", flush=True)


if __name__ == "__main__":
    main()
