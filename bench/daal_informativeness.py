"""What DAAL's score says about the task model, variant by variant, on digits' first cycle.

For each seed: the main job's initial pool (10% labeled at random), the main job's task
model and recipe trained on it in-process, its features and class probabilities over the
pool. Then, for each variant of DAAL's training, DAAL is trained in-process on those
features (the same code as on a Ray Train worker) and its ScoreNet's scores on the
unlabeled samples are compared with what the model gets wrong: the AUROC for "the model
misclassifies this sample", the Spearman correlation with the per-sample loss, and the
mean distance of the top-K (K = 5% of the pool, the protocol's batch) to the labeled set,
next to random's. Also the known-answer pool's share of its dense far cluster among the
top 100 (``daal_ray.acquisition.daal.synthetic``), which the test suite asserts.

    python bench/daal_informativeness.py                    # every variant, seeds 0-2
    python bench/daal_informativeness.py --variants default,paper-w-gan-1 --seeds 5
    python bench/daal_informativeness.py --from-json bench/results/daal_informativeness.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from daal_ray.acquisition.daal.fit import DAALParams, daal_inputs, score_features, train_daal
from daal_ray.acquisition.daal.synthetic import DENSE, known_answer_pool
from daal_ray.cli.run import DIGITS_DAAL_EPOCHS
from daal_ray.cycle import initial_pool
from daal_ray.data import open_dataset
from daal_ray.diagnostics import informativeness
from daal_ray.selection import min_sq_distances
from daal_ray.settings import DataConfig
from daal_ray.training import fit_task_model

MAIN_JOB_DAAL_EPOCHS = DIGITS_DAAL_EPOCHS  # jobs/digits.py's default

VARIANTS: dict[str, dict] = {  # each against the defaults; "paper-*" puts one setting back at the paper's value
    "default": {},
    "features-alone": {"confidence_weight": 0.0},
    "confidence-weight-3": {"confidence_weight": 3.0},
    "sequential": {"updates": "sequential"},
    "20-epochs": {"epochs": 20},
    "40-epochs": {"epochs": 40},
    "paper-dropout-0.4": {"dropout": 0.4},
    "paper-udis-on-reconstruction": {"udis_fake": "reconstruction"},
    "paper-w-dpp-1": {"w_dpp": 1.0},
    "paper-w-gan-1": {"w_gan": 1.0},
    "previous-defaults": {"dropout": 0.4, "udis_fake": "reconstruction", "w_dpp": 1.0, "w_gan": 1.0, "confidence_weight": 0.0,
                          "updates": "sequential"},
}


def cycle_zero(seed: int) -> dict[str, np.ndarray]:
    """Features, probabilities and labels of the pool after the main job's first training."""
    ds = open_dataset(DataConfig())
    pool = ds.sample_ids("train")
    labeled = initial_pool(pool, max(1, round(0.10 * pool.size)), seed)
    recipe = ds.default_train()
    torch.set_num_threads(1)
    model, _ = fit_task_model(ds, labeled, ds.targets("train", labeled), recipe, seed=seed,
                              device=torch.device("cpu"))
    model.eval()
    with torch.inference_mode():
        feats, logits = model.forward_features(ds.images("train", pool))
    lab = np.isin(pool, labeled)
    return {"features": feats.numpy(), "probs": torch.softmax(logits, 1).numpy(), "labeled": lab,
            "labels": ds.targets("train", pool), "batch": int(round(0.05 * pool.size))}


def evaluate(p: DAALParams, pool: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    x, lab = pool["features"], pool["labeled"]
    inputs = daal_inputs(pool, p)  # the features, and the confidence profile with confidence_weight
    t0 = time.perf_counter()
    nets, _ = train_daal(inputs[lab], inputs[~lab], p, seed=seed)
    fit_s = time.perf_counter() - t0
    scores = score_features(nets.score, inputs[~lab], normalize=p.normalize)
    row = informativeness(scores, pool["probs"][~lab], pool["labels"][~lab])
    k = pool["batch"]
    top = np.argsort(-scores, kind="stable")[:k]
    rand = np.random.default_rng(seed).choice(scores.size, k, replace=False)
    centres = torch.as_tensor(x[lab], dtype=torch.float64)
    dist = {name: float(min_sq_distances(torch.as_tensor(x[~lab][i], dtype=torch.float64), centres).sqrt().mean())
            for name, i in (("top", top), ("random", rand))}
    ka = known_answer_pool(seed=seed)  # features only (no model): DAAL's input is the features alone
    ka_p = replace(p, confidence_weight=0.0)
    ka_nets, _ = train_daal(ka.labeled, ka.unlabeled, ka_p, seed=seed)
    ka_top = np.argsort(-score_features(ka_nets.score, ka.unlabeled, normalize=p.normalize))[:100]
    return {**row, "dist_top": dist["top"], "dist_random": dist["random"], "fit_s": fit_s,
            "score_std": float(scores.std()), "known_answer_dense_top100": float(np.mean(ka.groups[ka_top] == DENSE))}


def print_table(results: dict[str, list[dict]]) -> None:
    cols = ["auroc_wrong", "spearman_loss", "spearman_entropy", "dist_top", "dist_random", "score_std",
            "known_answer_dense_top100", "fit_s"]
    print("| variant | seeds | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, rows in results.items():
        cells = []
        for c in cols:
            v = np.array([r[c] for r in rows], dtype=float)
            cells.append(f"{v.mean():+.3f} +- {v.std():.3f}" if c.startswith("spearman") else f"{v.mean():.4g}")
        print(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=MAIN_JOB_DAAL_EPOCHS)
    ap.add_argument("--set", action="append", default=[], metavar="NAME:KEY=VALUE",
                    help="an extra variant, NAME:KEY=JSON;KEY=JSON (e.g. --set 'wide:w_gan=5;score_hidden=[512,256,64,32]')")
    ap.add_argument("--out", default="bench/results/daal_informativeness.json")
    ap.add_argument("--from-json")
    args = ap.parse_args()
    if args.from_json:
        print_table(json.loads(Path(args.from_json).read_text()))
        return
    variants = {v: VARIANTS[v] for v in args.variants.split(",") if v}
    for spec in args.set:
        name, _, kv = spec.partition(":")
        variants[name] = {k: json.loads(v) for k, v in (item.split("=", 1) for item in kv.split(";"))}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for seed in range(args.seeds):
        pool = cycle_zero(seed)
        acc = float((pool["probs"].argmax(1) == pool["labels"])[~pool["labeled"]].mean())
        print(f"seed {seed}: model accuracy on the unlabeled pool {acc:.3f}", flush=True)
        for name, overrides in variants.items():
            p = replace(DAALParams(epochs=args.epochs), **overrides)
            row = evaluate(p, pool, seed)
            results[name].append(row)
            print(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
