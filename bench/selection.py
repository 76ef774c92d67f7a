"""Benchmark: selection time and peak memory of coreset, daal, entropy, daal_diverse, badge and cluster_margin on large pools.

Synthetic pools of N samples with 128-d features (and 10-class probabilities for entropy),
K = 5% of N, ``--labeled`` labeled samples (k-center's initial centres). Each (strategy, N) setting runs in
its own subprocess, so its peak RSS is its own; the selection is called exactly as the
cycle loop calls it (``Strategy.select``), on the pool streamed in blocks of 8,192 rows:

* ``entropy``: per-block scores and top-K, merged by the exact streaming top-K;
* ``daal``: the same path with an untrained ScoreNet (paper widths) as the scorer;
* ``coreset``: the pool gathered once into arrays, then chunked greedy k-center;
* ``daal_diverse``: daal's streaming top beta x K, the candidates' rows read back, then
  K of them by batched k-means++ D^2 seeding (memory O(beta K d));
* ``badge``: the pool's features and probabilities gathered, then batched k-means++ over the
  gradient embeddings with factorised distances (never the N x C d embedding);
* ``cluster_margin``: the streaming top beta x K by minus the margin, a seeded sample of
  65,536 unlabeled rows cut by k-means into 2,048 centroids, average-linkage HAC on the
  centroids, the candidates assigned to their nearest centroid's cluster in a second pass,
  then the round-robin over the clusters (memory O(beta K + sample d)).

What is measured is the selection only (not inference, not DAAL's training). Each
k-center pick costs one matrix-vector product over the N unlabeled features, so the
greedy takes O(N K d) time; ``--coreset-picks`` caps the picks actually run and the time
for the full K is extrapolated as ``measured + (K - picks run) x (seconds per pick)``, the
seconds per pick being ``(measured - first step) / picks run``, reported
separately and marked as such. Peak memory is the process's peak RSS during the
selection (VmHWM reset before it) minus the RSS before it ("extra"), and the absolute peak.
Both wall and CPU seconds are reported: on a shared machine the wall time of a
single-threaded setting includes waiting for a core, its CPU time does not.

    python bench/selection.py                       # N = 100,000 (full K) and 1,000,000 (K capped)
    python bench/selection.py --sizes 1000000 --coreset-picks 50000 # full K at 1M: hours on one core
    python bench/selection.py --sizes 1000000 --strategies coreset,daal_diverse,badge,cluster_margin  # batch-aware
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

from daal_ray.acquisition import FitContext, build_strategy
from daal_ray.acquisition.daal import DAALStrategy, ScoreNet
from daal_ray.config import AcquisitionConfig
from daal_ray.selection import gather_features, min_sq_distances

BLOCK = 8192


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _pool(n: int, d: int, n_labeled: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The pool as blocks of ``BLOCK`` rows (views into one array per column)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), np.float32)
    for i in range(0, n, 1 << 16):  # chunked: no float64 copy of the whole pool
        x[i:i + (1 << 16)] = rng.standard_normal((min(1 << 16, n - i), d), dtype=np.float32)
    logits = rng.standard_normal((n, 10), dtype=np.float32) * 2
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    labeled = np.zeros(n, bool)
    labeled[rng.choice(n, n_labeled, replace=False)] = True
    return [{"sample_id": ids[i:i + BLOCK], "labeled": labeled[i:i + BLOCK], "features": x[i:i + BLOCK],
             "probs": probs[i:i + BLOCK]} for i in range(0, n, BLOCK)]


def _child(strategy: str, n: int, d: int, k: int, n_labeled: int, coreset_picks: int, threads: int) -> dict:
    import torch

    import daal_ray.scoring  # noqa: F401  (loaded before timing, as in the cycle loop)

    torch.set_num_threads(threads)
    blocks = _pool(n, d, n_labeled)
    ctx = FitContext(features=blocks, num_labeled=n_labeled, cycle=0, labeled_ids=np.zeros(0, np.int64),
                     pool_ids=np.arange(n, dtype=np.int64), device=torch.device("cpu"))
    s = build_strategy(AcquisitionConfig(strategy=strategy), seed=0, cycle=0)
    if isinstance(s, DAALStrategy):  # daal and its versions: an untrained ScoreNet as the scorer
        torch.manual_seed(0)
        s.feature_dim = s.inputs(blocks[0]).shape[1]  # the features and, by default, the confidence profile
        s.score_state = ScoreNet(s.feature_dim, s.params.score_hidden, s.params.dropout).state_dict()
        s._net = None
    k_run = min(k, coreset_picks) if strategy == "coreset" else k
    # Warm-up on a tiny pool: the first call pages in library code (BLAS kernels), which
    # would otherwise count as the selection's memory.
    tiny = _pool(2 * BLOCK, d, 8, seed=1)
    warm = s.select(FitContext(features=tiny, num_labeled=8, cycle=0, labeled_ids=np.zeros(0, np.int64),
                               pool_ids=np.arange(2 * BLOCK, dtype=np.int64), device=torch.device("cpu")), 4)
    del tiny, warm
    rss0 = _rss_mb("VmRSS")
    ok = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    ids, _, _ = s.select(ctx, k_run)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak_mb = _rss_mb("VmHWM")
    assert ids.size == k_run and np.unique(ids).size == k_run
    extra = {}
    if strategy == "coreset":
        # The first step (distances to the labeled centres) timed on its own, after the
        # measured run so that its buffers do not count in the run's memory.

        _, xl, _, xu = gather_features(blocks, n_labeled, n - n_labeled)
        t1, c1 = time.perf_counter(), time.process_time()
        min_sq_distances(torch.as_tensor(xu), torch.as_tensor(xl))
        extra["init_s"] = time.perf_counter() - t1
        extra["init_cpu_s"] = time.process_time() - c1
    out = {"strategy": strategy, "n": n, "k": k, "k_run": k_run, "labeled": n_labeled, "seconds": seconds,
           "cpu_seconds": cpu_seconds,
           "peak_rss_mb": peak_mb, "extra_mb": peak_mb - rss0 if ok else float("nan"),
           "threads": threads, **extra}
    if k_run < k:
        per_pick = (seconds - extra["init_s"]) / k_run
        per_pick_cpu = (cpu_seconds - extra["init_cpu_s"]) / k_run
        out["per_pick_ms"], out["per_pick_cpu_ms"] = 1e3 * per_pick, 1e3 * per_pick_cpu
        out["extrapolated_full_k_s"] = seconds + (k - k_run) * per_pick
        out["extrapolated_full_k_cpu_s"] = cpu_seconds + (k - k_run) * per_pick_cpu
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="pool sizes N, comma-separated")
    p.add_argument("--strategies", default="entropy,daal,coreset,daal_diverse,badge,cluster_margin")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k-frac", type=float, default=0.05, help="K as a fraction of N (default 5%%)")
    p.add_argument("--labeled", type=int, default=1000, help="labeled samples (k-center's initial centres)")
    p.add_argument("--coreset-picks", type=int, default=5000, help="cap on k-center picks actually run")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per setting (1: on a shared machine more threads mostly wait for each other)")
    p.add_argument("--out", default="bench/results/selection.json")
    p.add_argument("--child", nargs=2, metavar=("STRATEGY", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        strategy, n = args.child[0], int(args.child[1])
        res = _child(strategy, n, args.dim, max(1, int(round(args.k_frac * n))), args.labeled,
                     args.coreset_picks, args.threads)
        print(json.dumps(res))
        return 0
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for strategy in args.strategies.split(","):
            cmd = [sys.executable, __file__, "--child", strategy, str(n), "--dim", str(args.dim),
                   "--k-frac", str(args.k_frac), "--labeled", str(args.labeled),
                   "--coreset-picks", str(args.coreset_picks), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "load_avg": os.getloadavg(), "rows": rows}, indent=1))
    print(f"\n{'N':>9} {'strategy':>14} {'K run/K':>13} {'wall s':>8} {'CPU s':>8} {'full-K CPU s':>13} "
          f"{'extra MB':>9} {'peak MB':>8}")
    for r in rows:
        full = r.get("extrapolated_full_k_cpu_s", r["cpu_seconds"])
        mark = "*" if "extrapolated_full_k_s" in r else " "
        print(f"{r['n']:>9,} {r['strategy']:>14} {r['k_run']:>6,}/{r['k']:<6,} {r['seconds']:>8.2f} "
              f"{r['cpu_seconds']:>8.2f} {full:>12.1f}{mark} {r['extra_mb']:>9.0f} {r['peak_rss_mb']:>8.0f}")
    print("* extrapolated from the measured picks: measured + remaining picks x seconds per pick")
    return 0


if __name__ == "__main__":
    sys.exit(main())
