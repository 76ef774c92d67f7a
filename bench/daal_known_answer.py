"""DAAL on a pool whose right ranking is known: which variant ranks it right, how often.

The pool (``daal_ray.acquisition.daal.synthetic``) holds near-duplicates of the labeled
cluster, a dense unlabeled cluster far from every labeled sample, and isolated outliers.
The paper's claim puts the dense far cluster on top. For each variant of DAAL's training
and each seed this trains DAAL in-process (same code as on a Ray Train worker), scores the
unlabeled samples and reports each group's mean score and the share of the dense far
cluster among the top-100.

    python bench/daal_known_answer.py                       # every variant, seeds 0-2
    python bench/daal_known_answer.py --variants default --seeds 10
    python bench/daal_known_answer.py --from-json bench/results/daal_known_answer*.json   # re-print
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from daal_ray.acquisition.daal.fit import DAALParams, score_features, train_daal
from daal_ray.acquisition.daal.synthetic import DENSE, known_answer_pool

VARIANTS: dict[str, dict] = {
    "default": {},
    "alg1-as-printed": {"rater_adversarial": False, "weighted_gan": False, "vae_dropout": 0.4,
                        "w_feature_recon": 0.0, "dpp_per_item": False},
    "unweighted-gan": {"weighted_gan": False},
    "paper-vae-dropout": {"vae_dropout": 0.4},
    "no-feature-recon": {"w_feature_recon": 0.0},
    "dpp-unscaled": {"dpp_per_item": False},
    "udis-only": {"use_rdis": False},
    "rdis-only": {"use_udis": False},
}


def run(variant: str, seed: int, epochs: int, top: int = 100) -> dict:
    pool = known_answer_pool(seed)
    p = DAALParams(epochs=epochs, **VARIANTS[variant])
    t0 = time.perf_counter()
    nets, _ = train_daal(pool.labeled, pool.unlabeled, p, seed=seed)
    scores = score_features(nets.score, pool.unlabeled, normalize=p.normalize)
    order = np.lexsort((np.arange(scores.size), -scores))[:top]
    means = pool.group_means(scores)
    return {"variant": variant, "seed": seed, "near": means[0], "dense": means[1], "outliers": means[2],
            "dense_in_top": float(np.mean(pool.groups[order] == DENSE)),
            "right": bool(means[1] > means[0] and means[1] > means[2]), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--out", default="bench/results/daal_known_answer.json")
    ap.add_argument("--from-json", nargs="*", default=None, help="re-print the table from earlier runs' JSON files")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = [r for f in args.from_json or [] for r in json.loads(Path(f).read_text())]
    for variant in [] if args.from_json else args.variants.split(","):
        for seed in range(args.seeds):
            rows.append(run(variant, seed, args.epochs))
            print(json.dumps(rows[-1]), flush=True)
    if not args.from_json:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print("\n| variant | near-duplicates | dense far cluster | outliers | dense share of top-100 | right ranking |")
    print("|---|---|---|---|---|---|")
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        cell = lambda k: f"{np.mean([r[k] for r in rs]):.3f} +- {np.std([r[k] for r in rs]):.3f}"  # noqa: E731
        print(f"| {variant} | {cell('near')} | {cell('dense')} | {cell('outliers')} | {cell('dense_in_top')} | "
              f"{sum(r['right'] for r in rs)}/{len(rs)} |")


if __name__ == "__main__":
    main()
