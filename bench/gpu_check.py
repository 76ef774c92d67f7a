"""GPU check: one short script (under 8 minutes on one GPU) for the paths a GPU changes.

Each figure is measured side by side with the same code on the CPU where that makes sense
(the CPU side is sized down so the script stays short, one torch thread in every setting;
its figures are per-second rates):

1. WRN-28-2 training, images/s, CIFAR-shaped synthetic batches: a plain PyTorch loop on the
   device, and the same loop through a one-worker Ray Train group (``use_gpu=True``: NCCL;
   on CPU: gloo), so the figure includes what Ray Train adds per step.
2. Pool scoring, images/s end to end (start-up included): the Ray Data pipeline
   (:func:`daal_ray.scoring.select_from_images`, one actor, on the GPU with
   ``gpus_per_inference_actor=1``) against a plain loop over the same model and images.
3. DAAL's fit, steps/s at the main job's shapes (138-d inputs: 128-d features and a 10-class
   confidence profile; batches of 128).
4. Selection over a synthetic pool (1,000,000 x 128 on the GPU, 100,000 x 128 with
   ``--cpu``), K = 5%: core-set's greedy k-center (``--coreset-picks`` picks run, the rest
   extrapolated), DAAL-diverse's D^2 seeding over its top 4K candidates, BADGE's D^2 seeding
   over the whole pool's gradient embeddings.

    python bench/gpu_check.py            # on a GPU machine: GPU and CPU side by side
    python bench/gpu_check.py --cpu      # no GPU: the CPU side only (a check that it runs)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from daal_ray.acquisition import build_strategy
from daal_ray.acquisition.badge import badge_min_sq, gradient_residuals
from daal_ray.acquisition.daal.fit import DAALNets, DAALParams, daal_step, normalize_features, optimizers
from daal_ray.config import AcquisitionConfig
from daal_ray.data import get_dataset
from daal_ray.models import build_model
from daal_ray.runtime import init_ray, quiet_ray_data
from daal_ray.scoring import select_from_images
from daal_ray.selection import d2_seeding, euclidean_min_sq, k_center_greedy
from daal_ray.settings import DataConfig, ScaleConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_steps(device: torch.device, batch: int, steps: int) -> float:
    """Images/s of WRN-28-2 SGD steps on synthetic CIFAR-shaped batches (the model built here)."""
    model = build_model("wrn28_2", num_classes=10, in_channels=3).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def _ray_train_loop(config: dict) -> None:
    """Per-worker body: the same steps on the worker's device (DDP-wrapped by Ray Train)."""
    import ray.train
    import ray.train.torch

    device = ray.train.torch.get_device()
    torch.set_num_threads(config["threads"])
    model = ray.train.torch.prepare_model(build_model("wrn28_2", num_classes=10, in_channels=3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(config["batch"], 3, 32, 32, device=device)
    y = torch.randint(0, 10, (config["batch"],), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(3 + config["steps"]):
        if i == 3:
            _sync(device)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    _sync(device)
    rate = config["batch"] * config["steps"] / (time.perf_counter() - t0)
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps({"images_per_s": rate}))


def train_through_ray(use_gpu: bool, batch: int, steps: int, storage: Path) -> float:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    storage.mkdir(parents=True, exist_ok=True)
    out = storage / "rate.json"
    trainer = TorchTrainer(
        _ray_train_loop, train_loop_config={"batch": batch, "steps": steps, "out": str(out),
                                           "threads": torch.get_num_threads()},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(name=f"gpu-check-{'gpu' if use_gpu else 'cpu'}", storage_path=str(storage)),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"))
    trainer.fit()
    return float(json.loads(out.read_text())["images_per_s"])


def _write_cifar_like(root: Path, n_train: int) -> DataConfig:
    import pickle

    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    per = max(1, n_train // 5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = 100 if name == "test_batch" else per
        with open(base / name, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, fh, protocol=4)
    return DataConfig(name="cifar10", root=str(root))


def scoring(device: torch.device, n_train: int, tmp: Path) -> dict:
    """Pool scoring end to end: plain loop against the Ray Data pipeline, same model and images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _write_cifar_like(tmp / "data", n_train)
    ds = get_dataset(data)
    ids = ds.sample_ids("train")
    (tmp / "shards").mkdir()
    for i, part in enumerate(np.array_split(ids, 8)):
        pq.write_table(pa.table({"sample_id": part}), tmp / "shards" / f"part-{i}.parquet")
    ckpt = str(tmp / "model.pt")
    torch.save(build_model("wrn28_2", num_classes=10, in_channels=3).state_dict(), ckpt)
    k, batch = max(1, ids.size // 20), 512
    t0 = time.perf_counter()
    model = build_model("wrn28_2", num_classes=10, in_channels=3)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.to(device).eval()
    scores = []
    with torch.inference_mode():
        for i in range(0, ids.size, batch):
            _, logits = model.forward_features(ds.images("train", ids[i:i + batch]).to(device))
            p = torch.softmax(logits.float(), 1)
            scores.append(-(p * p.clamp_min(1e-12).log()).sum(1).cpu())
    torch.topk(torch.cat(scores), k)
    plain = ids.size / (time.perf_counter() - t0)
    scale = ScaleConfig(inference_batch_size=batch, inference_actors=1, use_gpu=device.type == "cuda",
                        gpus_per_inference_actor=1.0 if device.type == "cuda" else 0.0)
    strategy = build_strategy(AcquisitionConfig(strategy="entropy"), seed=0, cycle=0)
    t0 = time.perf_counter()
    select_from_images(tmp / "shards", strategy, k, np.zeros(0, np.int64), data=data, model_name="wrn28_2",
                       num_classes=10, in_channels=3, checkpoint=ckpt, scale=scale)
    ray_rate = ids.size / (time.perf_counter() - t0)
    return {"images": int(ids.size), "plain_images_per_s": plain, "ray_data_images_per_s": ray_rate,
            "ray_vs_plain": ray_rate / plain}


def daal_steps(device: torch.device, steps: int) -> float:
    p = DAALParams()
    torch.manual_seed(0)
    dim = 138  # DAAL's input in the main job: 128-d features and the 10-class confidence profile
    nets = DAALNets(dim, p).to(device)
    opts = optimizers(nets, p, device)
    x_l = normalize_features(torch.randn(128, dim, device=device))
    x_u = normalize_features(torch.randn(128, dim, device=device) + 0.5)
    for _ in range(5):
        daal_step(nets, opts, p, x_l, x_u)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        daal_step(nets, opts, p, x_l, x_u)
    _sync(device)
    return steps / (time.perf_counter() - t0)


def selection(device: torch.device, n: int, coreset_picks: int) -> dict:
    """Selection seconds at ``n x 128``, K = 5%, on ``device`` (core-set extrapolated)."""
    gen = torch.Generator().manual_seed(0)
    centres_of = torch.randn(64, 128, generator=gen) * 3
    x = (centres_of[torch.randint(64, (n,), generator=gen)] + torch.randn(n, 128, generator=gen)).to(device)
    probs = torch.softmax(torch.randn(n, 10, generator=gen) * 2, 1).numpy()
    k = n // 20
    labeled = x[:1000]
    out = {"n": n, "k": k}
    _sync(device)
    t0 = time.perf_counter()
    k_center_greedy(x, labeled, min(k, coreset_picks), device=device)
    _sync(device)
    run = time.perf_counter() - t0
    out["coreset_s"] = run * k / min(k, coreset_picks)
    out["coreset_extrapolated"] = coreset_picks < k
    scores = torch.rand(n, generator=gen).to(device)
    _sync(device)
    t0 = time.perf_counter()
    cand = torch.topk(scores, min(n, 4 * k)).indices
    d2_seeding(cand.numel(), k, euclidean_min_sq(x[cand]), seed=0, first=0, device=device)
    _sync(device)
    out["daal_diverse_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = torch.as_tensor(gradient_residuals(probs), device=device)
    d2_seeding(n, k, badge_min_sq(x, r), seed=0, first=0, device=device)
    _sync(device)
    out["badge_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="no GPU: measure the CPU side only, at its reduced sizes")
    ap.add_argument("--coreset-picks", type=int, default=2000)
    ap.add_argument("--out", default="bench/results/gpu_check.json")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --cpu for the CPU side only")
    t_start = time.perf_counter()
    init_ray(num_cpus=None)
    quiet_ray_data()
    devices = [torch.device("cpu")] if args.cpu else [torch.device("cuda"), torch.device("cpu")]
    results: dict = {"host": platform.node(), "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for device in devices:
            gpu = device.type == "cuda"
            torch.set_num_threads(1)  # the CPU side: one thread in every setting (Ray's workers get one)
            row: dict = {}
            batch, steps = (128, 50) if gpu else (32, 3)
            row["wrn_train_plain_images_per_s"] = _train_steps(device, batch, steps)
            row["wrn_train_ray_images_per_s"] = train_through_ray(gpu, batch, steps, Path(tmp) / f"ray-{device.type}")
            row["scoring"] = scoring(device, 20_000 if gpu else 2_000, Path(tmp) / f"score-{device.type}")
            row["daal_steps_per_s"] = daal_steps(device, 200 if gpu else 50)
            row["selection"] = selection(device, 1_000_000 if gpu else 100_000,
                                         args.coreset_picks if gpu else min(args.coreset_picks, 500))
            results[device.type] = row
            print(device.type, json.dumps(row, indent=1), flush=True)
    results["wall_s"] = time.perf_counter() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"written: {args.out} ({results['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
