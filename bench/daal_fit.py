"""Benchmark: DAAL training time per epoch on 50,000 samples of 128-d features, and the
speed-up from 1 to 2 Ray Train workers.

Every setting trains the same networks (paper batch 128, Alg. 1's three updates per batch)
on the same synthetic features (10% labeled) for ``--epochs`` epochs, in one run:

* ``in-process``: ``train_daal`` in this process, no Ray (the compute floor);
* ``ray-1`` / ``ray-2``: ``train_daal`` inside a TorchTrainer with 1 and 2 workers (each
  worker takes a strided shard and gradients are averaged over ranks), one CPU thread each.

Time per epoch is measured inside the training function, so the TorchTrainer start-up is
reported separately.

    python bench/daal_fit.py                 # 50,000 x 128, 2 epochs per setting
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from daal_ray.acquisition.daal.fit import DAALParams, train_daal
from daal_ray.runtime import init_ray, world


def _features(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    n_l = n // 10
    return x[:n_l], x[n_l:]


def _loop(config: dict) -> None:
    torch.set_num_threads(1)
    rank, size = world()
    xl, xu = _features(config["n"], config["d"])
    p = DAALParams(epochs=config["epochs"])
    t0 = time.perf_counter()
    train_daal(xl[rank::size], xu[rank::size], p, seed=0)
    if rank == 0:  # Train V2 returns metrics only with a checkpoint; a file is simpler
        Path(config["out"]).write_text(json.dumps({"epoch_s": (time.perf_counter() - t0) / config["epochs"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default="bench/results/daal_fit.json")
    args = ap.parse_args()

    torch.set_num_threads(1)
    xl, xu = _features(args.n, args.d)
    t0 = time.perf_counter()
    train_daal(xl, xu, DAALParams(epochs=args.epochs), seed=0)
    results = {"in-process": {"epoch_s": (time.perf_counter() - t0) / args.epochs}}

    import ray.train
    from ray.train.torch import TorchTrainer


    init_ray()
    scratch = Path(tempfile.mkdtemp(prefix="daal-fit-bench-"))
    for workers in (1, 2):
        loop_out = scratch / f"epoch-{workers}.json"
        trainer = TorchTrainer(_loop, train_loop_config={"n": args.n, "d": args.d, "epochs": args.epochs,
                                                         "out": str(loop_out)},
                               scaling_config=ray.train.ScalingConfig(num_workers=workers),
                               run_config=ray.train.RunConfig(name=f"daal-fit-{workers}",
                                                              storage_path=str(scratch)))
        t0 = time.perf_counter()
        trainer.fit()
        total = time.perf_counter() - t0
        epoch_s = json.loads(loop_out.read_text())["epoch_s"]
        results[f"ray-{workers}"] = {"epoch_s": epoch_s, "fit_s": total, "startup_s": total - epoch_s * args.epochs}
    base = results["ray-1"]["epoch_s"]
    print(f"DAAL, {args.n:,} samples x {args.d}-d features, batch 128, {args.epochs} epochs per setting")
    print("| setting | s / epoch | speed-up vs ray-1 | TorchTrainer start-up + teardown (s) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['epoch_s']:.1f} | {base / r['epoch_s']:.2f}x | {r.get('startup_s', float('nan')):.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
