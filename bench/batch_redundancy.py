"""Benchmark: what the per-cycle batch-redundancy diagnostic costs, against a pool pass.

After each selection the cycle loop runs the cycle's checkpoint on the K selected samples
only (``daal_ray.report.batch_redundancy``) to record the batch's mean pairwise cosine
similarity and class entropy. This script times it for several K on digits, side by side
with one forward pass over the whole training pool (what a strategy with features already
pays, and what the diagnostic avoids repeating), in one process, one thread, median of
``--repeats`` runs each. Both include loading the checkpoint.

    python bench/batch_redundancy.py            # writes bench/results/batch_redundancy.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from daal_ray.config import resolve_config
from daal_ray.data import open_dataset
from daal_ray.diagnostics import batch_redundancy
from daal_ray.models import build_model
from daal_ray.training import load_state_dict
from daal_ray.tuning import plan_experiments


def _pool_pass(cfg, ds, ids: np.ndarray, checkpoint: Path) -> None:
    model = build_model(cfg.train.model, num_classes=ds.num_classes, in_channels=ds.in_channels)
    model.load_state_dict(load_state_dict(checkpoint))
    model.eval()
    step = cfg.scale.inference_batch_size
    with torch.inference_mode():
        for start in range(0, ids.size, step):
            model.forward_features(ds.images("train", ids[start:start + step]))


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="bench/results/batch_redundancy.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    (cfg,) = plan_experiments(dataset="digits", strategies=["random"])
    cfg = resolve_config(cfg)
    ds = open_dataset(cfg.data)
    pool = ds.sample_ids("train")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        torch.manual_seed(0)
        torch.save(build_model(cfg.train.model, num_classes=ds.num_classes, in_channels=ds.in_channels).state_dict(),
                   ckpt)
        pool_s = _median_s(lambda: _pool_pass(cfg, ds, pool, ckpt), args.repeats)
        rows = []
        for k in (72, 288, 1150):
            ids = np.sort(rng.choice(pool, size=k, replace=False))
            s = _median_s(lambda: batch_redundancy(cfg, ds, ids, ckpt), args.repeats)
            rows.append({"k": k, "redundancy_s": s, "pool_pass_s": pool_s, "ratio_to_pool_pass": s / pool_s})
    print(f"pool of {pool.size} samples ({cfg.train.model}), one thread, median of {args.repeats}")
    print(f"{'K':>6} {'redundancy (ms)':>16} {'pool pass (ms)':>15} {'ratio':>7}")
    for r in rows:
        print(f"{r['k']:>6} {1000 * r['redundancy_s']:>16.1f} {1000 * r['pool_pass_s']:>15.1f} "
              f"{r['ratio_to_pool_pass']:>7.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"pool": int(pool.size), "model": cfg.train.model, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
