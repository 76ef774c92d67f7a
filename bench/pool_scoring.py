"""Benchmark: the Ray Data pool-scoring pipeline against a plain PyTorch loop, side by side.

Both score the same pool with the same task model and strategy and keep the exact top-K:

* ``plain``: one process reads the id shards with pyarrow, and per batch loads the images,
  runs the model (``forward_features``), scores (entropy of the softmax) and merges the
  batch's top-K (``StreamingTopK``);
* ``ray-N``: :func:`daal_ray.scoring.select_from_images`: ``ray.data.read_parquet`` over
  the id shards, ``N`` actors that each run the model, score and cut their batch to its
  top-K (:class:`~daal_ray.scoring.PredictScoreActor`), the exact merge in the driver.

The pool is a CIFAR-10-shaped dataset written in the official python layout to a temporary
folder (random uint8 images, 32x32x3; CIFAR itself is not downloaded), scored by
``small_cnn`` (untrained weights: throughput does not depend on them). Same batch size,
same torch threads per model process (``--threads``), and each setting is warmed up by one
pass over two shards before the timed passes; the timed passes alternate settings (``--repeats`` rounds)
so that load from elsewhere on the machine falls on all of them. The Ray figures include
everything one call costs: actor start-up (process, imports, loading the dataset and the
checkpoint), scheduling and the merge. The top-K of every pass is checked to be the same.

Two figures per setting: ``end to end`` (the full pool's unlabeled images / the seconds of one
call, start-up included) and ``steady`` (marginal throughput: every setting also scores the
first half of the shards, and ``(n_full - n_half) / (t_full - t_half)`` cancels what a call
costs before its first batch: process start-up, imports, loading the dataset and the model).
On a pool of millions the steady figure is what a call runs at; on this 50,000-image pool
the start-up is a visible share of the end-to-end time.

    python bench/pool_scoring.py                     # 50,000 images, batch 512, 1 thread
    python bench/pool_scoring.py --train-batches 2 --repeats 1   # a quick look (10,000 images)
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from daal_ray.acquisition import build_strategy
from daal_ray.acquisition.entropy import predictive_entropy
from daal_ray.config import AcquisitionConfig, DataConfig, ScaleConfig
from daal_ray.data import get_dataset
from daal_ray.models import build_model
from daal_ray.runtime import init_ray, quiet_ray_data
from daal_ray.scoring import select_from_images
from daal_ray.selection import StreamingTopK, topk_arrays
from daal_ray.training import load_state_dict


def write_cifar_like(root: Path, train_batches: int, seed: int = 0) -> None:
    """Random images in CIFAR-10's python layout (``cifar-10-batches-py``)."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = 10_000 if name == "test_batch" or int(name[-1]) <= train_batches else 10
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        with open(base / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=4)


def write_id_shards(ids: np.ndarray, folder: Path, n_shards: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(ids, n_shards)):
        pq.write_table(pa.table({"sample_id": part}), folder / f"part-{i:03d}.parquet")


def plain_loop(shards: Path, data, checkpoint: str, labeled: np.ndarray, k: int, batch_size: int,
               threads: int) -> tuple[np.ndarray, float]:
    """The same work in one process: no Ray."""
    import pyarrow.parquet as pq
    import torch


    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    dataset = get_dataset(data)
    model = build_model("small_cnn", num_classes=10, in_channels=3)
    model.load_state_dict(load_state_dict(checkpoint))
    model.eval()
    merger = StreamingTopK(k)
    for path in sorted(shards.glob("*.parquet")):
        for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["sample_id"]):
            ids = rb.column(0).to_numpy()
            ids = ids[~np.isin(ids, labeled)]
            with torch.inference_mode():
                _, logits = model.forward_features(dataset.images("train", ids))
                probs = torch.softmax(logits.float(), dim=1).numpy()
            merger.push(*topk_arrays(ids, predictive_entropy(probs), k))
    return merger.result()[0], time.perf_counter() - t0


def ray_pipeline(shards: Path, data, checkpoint: str, labeled: np.ndarray, k: int, batch_size: int,
                 threads: int, actors: int) -> tuple[np.ndarray, float]:
    scale = ScaleConfig(inference_batch_size=batch_size, inference_actors=actors, cpus_per_inference_actor=threads)
    strategy = build_strategy(AcquisitionConfig(strategy="entropy"), seed=0, cycle=0)
    t0 = time.perf_counter()
    res = select_from_images(shards, strategy, k, labeled, data=data, model_name="small_cnn", num_classes=10,
                             in_channels=3, checkpoint=checkpoint, scale=scale)
    return res.ids, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-batches", type=int, default=5, help="CIFAR train batches of 10,000 images (1-5)")
    p.add_argument("--shards", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every model process")
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2, help="timed rounds (each runs every setting once)")
    p.add_argument("--actors", default="1,2", help="Ray settings: scoring actor counts")
    p.add_argument("--out", default="bench/results/pool_scoring.json")
    args = p.parse_args()

    import torch


    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="pool-scoring-") as tmp:
        root = Path(tmp)
        write_cifar_like(root / "data", args.train_batches)
        data = DataConfig(name="cifar10", root=str(root / "data"))
        ids = get_dataset(data).sample_ids("train")
        labeled = np.sort(np.random.default_rng(1).choice(ids, size=ids.size // 10, replace=False))
        write_id_shards(np.random.default_rng(2).permutation(ids), root / "shards", args.shards)
        (root / "warm").mkdir()
        (root / "half").mkdir()
        all_shards = sorted((root / "shards").glob("*.parquet"))
        for f in all_shards[:2]:
            (root / "warm" / f.name).write_bytes(f.read_bytes())
        for f in all_shards[: len(all_shards) // 2]:
            (root / "half" / f.name).write_bytes(f.read_bytes())
        torch.manual_seed(0)
        checkpoint = str(root / "model.pt")
        torch.save(build_model("small_cnn", num_classes=10, in_channels=3).state_dict(), checkpoint)
        init_ray()
        quiet_ray_data()
        settings = ["plain"] + [f"ray-{a}" for a in args.actors.split(",")]

        def run(setting: str, folder: str = "shards") -> tuple[np.ndarray, float]:
            common = (root / folder, data, checkpoint, labeled, args.k, args.batch_size, args.threads)
            if setting == "plain":
                return plain_loop(*common)
            return ray_pipeline(*common, actors=int(setting.split("-")[1]))

        for s in settings:  # warm-up: page cache, Ray's worker pool, imports
            run(s, "warm")
        times: dict[str, list[float]] = {s: [] for s in settings}
        half_times: dict[str, list[float]] = {s: [] for s in settings}
        reference = half_reference = None
        for _ in range(args.repeats):
            for s in settings:
                picked, seconds = run(s)
                reference = picked if reference is None else reference
                assert np.array_equal(picked, reference), f"{s} selected another top-K"
                times[s].append(seconds)
                half_picked, half_seconds = run(s, "half")
                half_reference = half_picked if half_reference is None else half_reference
                assert np.array_equal(half_picked, half_reference), f"{s} selected another top-K on the half pool"
                half_times[s].append(half_seconds)
                print(json.dumps({"setting": s, "seconds": seconds, "half_seconds": half_seconds}), flush=True)
        import pyarrow.parquet as pq

        half_ids = np.concatenate([pq.read_table(f).column("sample_id").to_numpy()
                                   for f in sorted((root / "half").glob("*.parquet"))])
    n = int(ids.size - labeled.size)
    n_half = int((~np.isin(half_ids, labeled)).sum())
    rows = []
    plain_rate = n / float(np.mean(times["plain"]))
    plain_steady = (n - n_half) / (float(np.mean(times["plain"])) - float(np.mean(half_times["plain"])))
    for s in settings:
        rate = n / float(np.mean(times[s]))
        steady = (n - n_half) / (float(np.mean(times[s])) - float(np.mean(half_times[s])))
        rows.append({"setting": s, "seconds": times[s], "half_seconds": half_times[s], "samples_per_s": rate,
                     "vs_plain": rate / plain_rate, "steady_samples_per_s": steady,
                     "steady_vs_plain": steady / plain_steady})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "scored": n, "scored_half": n_half,
                                          "load_avg": os.getloadavg(),
                                          "rows": rows}, indent=1))
    print(f"\n{n:,} unlabeled images scored, batch {args.batch_size}, {args.threads} torch thread(s) per model process")
    print(f"half pool: {n_half:,} unlabeled images")
    print(f"{'setting':>8} {'mean s':>8} {'samples/s':>10} {'vs plain':>9} {'steady/s':>9} {'vs plain':>9}"
          f"   passes full | half (s)")
    for r in rows:
        print(f"{r['setting']:>8} {np.mean(r['seconds']):>8.2f} {r['samples_per_s']:>10.0f} {r['vs_plain']:>8.2f}x "
              f"{r['steady_samples_per_s']:>9.0f} {r['steady_vs_plain']:>8.2f}x   "
              + ", ".join(f"{t:.2f}" for t in r["seconds"]) + " | " + ", ".join(f"{t:.2f}" for t in r["half_seconds"]))
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
