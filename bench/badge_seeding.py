"""Benchmark: ways to draw BADGE's k-means++ centres, side by side on one pool, in one run.

BADGE picks K centres by k-means++ (D^2) seeding over the gradient embeddings
``g_i = (p_i - onehot(yhat_i)) (x) phi_i``. Each variant runs in its own subprocess (its own
peak memory), one torch thread, on the same synthetic pool (N x 128 features, 10-class
probabilities, the pool of ``bench/selection.py``):

* ``batched``: the project's seeding (:func:`daal_ray.selection.d2_seeding` with
  :func:`daal_ray.acquisition.badge.badge_min_sq`): K // 128 centres per distance pass,
  distances factorised as ``(phi_i . phi_c)(r_i . r_c)``, so a pair costs O(d + C);
* ``exact``: the same with one centre per pass (``seeding_batch=1``), sequential k-means++:
  the quality reference;
* ``kmeans_par``: k-means|| (Bahmani et al. 2012): ``rounds`` passes each sampling about
  ``oversample x K / rounds`` points independently with probability proportional to D^2,
  then every point's nearest candidate weights the candidates and a weighted k-means++
  reduces them to K. Fewer sequential passes, more distance computations (N x
  oversample K for the rounds and as many for the weights);
* ``cells``: the batched seeding run per predicted class (BADGE's default beyond
  ``seeding_rows`` unlabeled samples: :func:`daal_ray.acquisition.badge.badge_cells`,
  :func:`daal_ray.selection.seed_in_cells`), each class its share of K: about 10 times
  fewer distance computations with 10 classes;
* ``faiss``: the batched seeding with faiss's exact inner-product search
  (``IndexFlatIP``) doing the distance pass. Faiss cannot take the factorised product, so
  it searches the explicit ``C d``-wide embeddings, built chunk by chunk (only where
  ``faiss`` is installed; it is not a dependency of the project).

Quality: the k-means potential of the K centres over the pool, ``sum_i min_c |g_i - g_c|^2``
(lower is better; relative to ``exact``), and the mean gradient norm of the picks (the
uncertainty BADGE keeps).

    python bench/badge_seeding.py --n 200000 --k 10000 --out bench/results/badge_seeding.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from daal_ray.acquisition.badge import badge_cells, badge_min_sq, gradient_residuals
from daal_ray.selection import d2_seeding, seed_in_cells

VARIANTS = ("batched", "cells", "exact", "kmeans_par", "faiss")


def _pool(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``phi [n, d]`` and residuals ``r [n, 10]`` of the selection benchmark's pool."""
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((n, d), dtype=np.float32)
    logits = rng.standard_normal((n, 10), dtype=np.float32) * 2
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    return torch.as_tensor(phi), torch.as_tensor(gradient_residuals(probs))


def _nearest(phi: torch.Tensor, r: torch.Tensor, centres: torch.Tensor, rows: int = 1 << 13) -> torch.Tensor:
    """Index (into ``centres``) of each point's nearest centre in gradient space."""
    sq = (phi[centres] * phi[centres]).sum(1) * (r[centres] * r[centres]).sum(1)
    out = torch.empty(phi.shape[0], dtype=torch.int64)
    pc, rc = phi[centres], r[centres] * -2.0
    for i in range(0, phi.shape[0], rows):
        block = phi[i:i + rows] @ pc.T
        torch.addcmul(sq[None], block, r[i:i + rows] @ rc.T, out=block)
        out[i:i + rows] = torch.argmin(block, dim=1)
    return out


def kmeans_parallel(phi: torch.Tensor, r: torch.Tensor, k: int, seed: int, first: int, rounds: int = 5,
                    oversample: float = 2.0) -> np.ndarray:
    """k-means|| over the factorised gradient embeddings: positions of ``k`` centres."""
    n = phi.shape[0]
    gen = torch.Generator().manual_seed(seed)
    min_sq = badge_min_sq(phi, r)
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[first] = True
    d2 = min_sq(torch.tensor([first])).double()
    ell = oversample * k / rounds
    for _ in range(rounds):
        p = (ell * d2 / d2.sum()).clamp_(max=1.0)
        new = torch.nonzero((torch.rand(n, generator=gen, dtype=torch.float64) < p) & ~chosen).flatten()
        if new.numel() == 0:
            break
        chosen[new] = True
        d2 = torch.minimum(d2, min_sq(new).double())
    cand = torch.nonzero(chosen).flatten()
    if cand.numel() <= k:  # too few candidates: top up with a uniform draw
        rest = torch.nonzero(~chosen).flatten()
        extra = rest[torch.randperm(rest.numel(), generator=gen)[:k - cand.numel()]]
        return torch.cat([cand, extra]).numpy()
    weights = torch.bincount(_nearest(phi, r, cand), minlength=cand.numel()).double()
    start = int(torch.nonzero(cand == first).flatten()[0])
    pos = d2_seeding(cand.numel(), k, badge_min_sq(phi[cand], r[cand]), seed=seed + 1, first=start,
                     log_weights=torch.log(weights.clamp_min(1e-300)))
    return cand[torch.as_tensor(pos)].numpy()


def faiss_min_sq(phi: torch.Tensor, r: torch.Tensor, rows: int = 1 << 13):
    """``min_sq(centres)`` for :func:`d2_seeding` by faiss's exact inner-product search over
    the explicit embeddings (``|g_i|^2 + |g_c|^2 - 2 max_c g_i . g_c``), chunk by chunk."""
    import faiss  # noqa: PLC0415  (optional: only this variant needs it)

    sq = ((phi * phi).sum(1) * (r * r).sum(1))

    def embed(idx: slice | torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(torch.einsum("nc,nd->ncd", r[idx], phi[idx]).reshape(len(phi[idx]), -1).numpy())

    def min_sq(centres: torch.Tensor) -> torch.Tensor:
        # max_c (g_i . g_c - |g_c|^2 / 2) is the nearest centre: one extra coordinate carries -|g_c|^2 / 2.
        gc = embed(centres)
        index = faiss.IndexFlatIP(gc.shape[1] + 1)
        index.add(np.concatenate([gc, (-0.5 * sq[centres].numpy())[:, None]], 1).astype(np.float32))
        out = torch.empty(phi.shape[0])
        for i in range(0, phi.shape[0], rows):
            gi = embed(slice(i, i + rows))
            best, _ = index.search(np.concatenate([gi, np.ones((gi.shape[0], 1), np.float32)], 1), 1)
            out[i:i + rows] = torch.as_tensor(best[:, 0])
        return (sq - 2.0 * out).clamp_min_(0.0)

    return min_sq


def _child(variant: str, n: int, d: int, k: int) -> dict:
    torch.set_num_threads(1)
    phi, r = _pool(n, d)
    norms = (phi.norm(dim=1) * r.norm(dim=1)).double()
    first = int(torch.argmax(norms))
    t0, c0 = time.perf_counter(), time.process_time()
    if variant == "batched":
        pos = d2_seeding(n, k, badge_min_sq(phi, r), seed=0, first=first)
    elif variant == "cells":
        # -r is largest at the predicted class: badge_cells reads the classes from it.
        cells = badge_cells(phi, (-r).numpy(), n, seed=0)
        norms_np = norms.numpy()
        pos = seed_in_cells(cells, k, lambda idx: badge_min_sq(phi[idx], r[idx]), seed=0,
                            first_of=lambda at: int(np.argmax(norms_np[at])))
    elif variant == "exact":
        pos = d2_seeding(n, k, badge_min_sq(phi, r), seed=0, first=first, batch=1)
    elif variant == "kmeans_par":
        pos = kmeans_parallel(phi, r, k, seed=0, first=first)
    elif variant == "faiss":
        import faiss  # noqa: PLC0415  (optional)

        faiss.omp_set_num_threads(1)
        pos = d2_seeding(n, k, faiss_min_sq(phi, r), seed=0, first=first)
    else:
        raise ValueError(variant)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    pos = np.asarray(pos)
    assert pos.size == k and np.unique(pos).size == k
    # Quality: the k-means potential of the centres over the pool (centres in chunks, so the
    # pass stays within memory), and how uncertain the picks are.
    potential = torch.full((n,), float("inf"), dtype=torch.float64)
    min_sq = badge_min_sq(phi, r)
    for j in range(0, k, 4096):
        potential = torch.minimum(potential, min_sq(torch.as_tensor(pos[j:j + 4096])).double())
    return {"variant": variant, "n": n, "k": k, "seconds": seconds, "cpu_seconds": cpu,
            "potential": float(potential.sum()), "mean_pick_norm": float(norms[pos].mean()),
            "mean_pool_norm": float(norms.mean())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=10_000)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="bench/results/badge_seeding.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.n, args.dim, args.k)))
        return 0
    rows = []
    for variant in args.variants.split(","):
        if variant == "faiss":
            try:
                import faiss  # noqa: F401, PLC0415  (optional)
            except ImportError:
                print("faiss: not installed, skipped", file=sys.stderr)
                continue
        cmd = [sys.executable, __file__, "--child", variant, "--n", str(args.n), "--dim", str(args.dim),
               "--k", str(args.k)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    ref = next((r for r in rows if r["variant"] == "exact"), rows[0])
    base = next((r for r in rows if r["variant"] == "batched"), rows[0])
    for r in rows:
        r["potential_vs_exact"] = r["potential"] / ref["potential"]
        r["cpu_vs_batched"] = r["cpu_seconds"] / base["cpu_seconds"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "load_avg": os.getloadavg(), "rows": rows}, indent=1))
    print(f"\n{'variant':>11} {'wall s':>8} {'CPU s':>8} {'CPU / batched':>13} {'potential / exact':>17} "
          f"{'mean |g| picks':>14}")
    for r in rows:
        print(f"{r['variant']:>11} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} {r['cpu_vs_batched']:>13.2f} "
              f"{r['potential_vs_exact']:>17.4f} {r['mean_pick_norm']:>14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
