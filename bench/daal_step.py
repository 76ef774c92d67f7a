"""DAAL's training step: milliseconds, FLOPs, and the achieved rate next to this machine's matmul rate.

One torch thread, the main job's shapes (138-d inputs: 128-d task features and the
10-class confidence profile; batches of 128 labeled and 128 unlabeled rows, the default
widths), ``sequential`` (Alg. 1 read literally: every update recomputes the forward pass)
against ``simultaneous`` (the default: the three updates' gradients from one forward
pass), each with Adam's per-tensor implementation and with its fused kernel (the default). FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` over one step (matrix products, forward and
backward); the matmul rate is that of square float32 products of 1024 and of a product of
the step's own shape (128 x 256 by 256 x 256), timed in the same process.

    python bench/daal_step.py
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from daal_ray.acquisition.daal.fit import DAALNets, DAALParams, daal_step, normalize_features, optimizers


def matmul_rate(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def step_figures(p: DAALParams, dim: int, rows: int, steps: int, fused: bool = True) -> dict:
    torch.manual_seed(0)
    nets = DAALNets(dim, p)
    opts = (optimizers(nets, p, torch.device("cpu")) if fused
            else {k: torch.optim.Adam(v, lr=p.lr) for k, v in nets.groups().items()})
    x_l = normalize_features(torch.randn(rows, dim))
    x_u = normalize_features(torch.randn(rows, dim) + 0.5)
    for _ in range(10):
        daal_step(nets, opts, p, x_l, x_u)
    with FlopCounterMode(display=False) as counter:
        daal_step(nets, opts, p, x_l, x_u)
    flops = counter.get_total_flops()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            daal_step(nets, opts, p, x_l, x_u)
        best = min(best, (time.perf_counter() - t0) / steps)
    return {"ms_per_step": 1e3 * best, "gflop_per_step": flops / 1e9, "gflops": flops / best / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=138)
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default="bench/results/daal_step.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rates = {"matmul 1024^3": matmul_rate(1024, 1024, 1024), "matmul 128x256x256": matmul_rate(128, 256, 256)}
    settings = {"sequential, per-tensor Adam": ("sequential", False), "sequential": ("sequential", True),
                "simultaneous, per-tensor Adam": ("simultaneous", False),
                "simultaneous": ("simultaneous", True)}  # the default last: fused Adam
    rows = {name: step_figures(replace(DAALParams(), updates=u), args.dim, args.rows, args.steps, fused=fused)
            for name, (u, fused) in settings.items()}
    print("| updates | ms / step | GFLOP / step | achieved GFLOP/s | share of the 1024^3 matmul rate |")
    print("|---|---|---|---|---|")
    for u, r in rows.items():
        print(f"| {u} | {r['ms_per_step']:.1f} | {r['gflop_per_step']:.3f} | {r['gflops']:.1f} | "
              f"{r['gflops'] / rates['matmul 1024^3']:.0%} |")
    print("\n" + ", ".join(f"{k}: {v:.1f} GFLOP/s" for k, v in rates.items()))
    for name in ("sequential, per-tensor Adam", "sequential", "simultaneous, per-tensor Adam"):
        ratio = rows[name]["ms_per_step"] / rows["simultaneous"]["ms_per_step"]
        print(f"the default (simultaneous, fused Adam) is {ratio:.2f}x faster per step than {name}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rates": rates, "steps": rows}, indent=1))


if __name__ == "__main__":
    main()
