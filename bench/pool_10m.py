"""Benchmark: DAAL, daal_diverse and cluster_margin selection over a pool of 10,000,000
samples with 128-d features, on disk.

The pool is written as parquet shards (``sample_id``, ``features`` as a fixed-size list of
float32) to a temporary folder (~5 GB; deleted at the end), then selected from exactly as
a user would (:func:`daal_ray.scoring.select_from_features`): one streaming pass gathers
every labeled feature and DAAL's bounded unlabeled sample (``max_fit_unlabeled``), DAAL is
trained on them in this process, and a second pass scores every unlabeled row with the
trained ScoreNet on Ray Data actors and merges the per-batch top-K.

Memory is sampled every 0.2 s during the selection (not while the shards are written):

* ``driver + workers``: resident memory (RSS) of this process plus every Ray worker process
  started by this Ray instance (command line ``ray::...``: tasks, actors, Ray Data's own
  actors, idle workers; not the raylet's two agents); the peak of the sum. RSS counts
  pages shared between processes (torch's libraries, object-store pages a worker has read)
  once per process, so the PSS sum (shared pages divided among their users) is given too;
* ``Ray system``: raylet, GCS, dashboard and the other processes of this Ray instance;
* ``object store``: bytes held in Ray's shared-memory object store (polled each second),
  and what was spilled to disk.

``--strategy daal_diverse`` selects the top beta x K by DAAL's score (the same fit), reads the
candidates' rows back and seeds K of them by k-means++ in spatial cells of ``--seeding-rows``
candidates; ``--strategy cluster_margin`` writes 10-class probabilities too and selects by
Cluster-Margin (the smallest margins, a hashed sample clustered by k-means then HAC, the
candidates assigned on the Ray Data workers). ``--compare-workers`` runs the selection
twice, Ray Data limited to 1 and then 2 CPUs, and says whether the two batches are the same
ids (memory is the peak over both).

As `daal-ray score` does, the bench sets this process and its Ray workers to hand freed
memory back (:func:`daal_ray.runtime.return_freed_memory`, ``worker_memory_env``);
``--keep-allocators`` leaves pyarrow's and glibc's allocators at their defaults, the
setting before, for a side-by-side figure.

The machine's load average is printed: the wall time depends on it.

    python bench/pool_10m.py                              # 10M x 128, K = 10,000, DAAL 2 epochs
    python bench/pool_10m.py --rows 1000000 --shards 10   # a quicker look
    python bench/pool_10m.py --strategy cluster_margin --k 500000 --seeding-rows 65536 --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from daal_ray.acquisition import build_strategy
from daal_ray.config import AcquisitionConfig, ScaleConfig
from daal_ray.runtime import KEEP_ALLOCATORS_ENV, quiet_ray_data, return_freed_memory, setup_logging, worker_memory_env
from daal_ray.scoring import select_from_features


def write_pool(folder: Path, rows: int, dim: int, shards: int, seed: int = 0, probs: bool = False) -> None:
    """Shard ``i`` holds ids ``i, i + shards, ...``: features from 20 Gaussian clusters (and,
    with ``probs``, 10-class softmax probabilities, from a bank of 65,536 rows too).

    The noise is drawn from a bank of 65,536 Gaussian rows (scaled per shard), because
    drawing 1.3 billion fresh normals dominates the benchmark's set-up on a small machine.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    bank = 0.5 * rng.standard_normal((65_536, dim), dtype=np.float32)
    logits = rng.standard_normal((65_536, 10), dtype=np.float32) * 2
    prob_bank = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    folder.mkdir(parents=True)
    for i in range(shards):
        ids = np.arange(i, rows, shards, dtype=np.int64)
        x = centres[rng.integers(0, 20, ids.size)]
        x += bank[rng.integers(0, bank.shape[0], ids.size)] * np.float32(1.0 + i / shards)
        cols = {"sample_id": ids, "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)}
        if probs:
            pr = prob_bank[rng.integers(0, prob_bank.shape[0], ids.size)]
            cols["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(pr.reshape(-1)), 10)
        pq.write_table(pa.table(cols), folder / f"part-{i:04d}.parquet", compression="none", row_group_size=65_536)
        del x, cols


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        out[int(d)] = (ppid, cmd)
    return out


def _mem_kb(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, RSS of shared memory) of ``pid`` in kB (zeros if it is gone).

    The shared-memory part (``RssShmem``) is, in a Ray worker, object-store pages the
    process has mapped: the same pages count in every reader and in the object store.
    """
    try:
        rss = pss = shm = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssShmem:"):
                shm = int(line.split()[1])
        return rss, pss, shm
    except (OSError, ValueError):
        return 0, 0, 0


_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # per-node agents of the raylet: system


class MemorySampler:
    """Samples the memory of this process, its Ray workers and Ray's own processes."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.peak = {"rss_mb": 0.0, "pss_mb": 0.0, "rss_no_shm_mb": 0.0, "system_rss_mb": 0.0, "object_store_mb": 0.0, "workers": 0,
                     "spilled_mb": 0.0}
        self.samples = 0
        self.at_peak: list[tuple[str, int, int, int]] = []  # (process, RSS, PSS, shared-memory RSS) in MB
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True),
                         threading.Thread(target=self._store_loop, daemon=True)]

    def _descendants(self) -> tuple[list[int], list[int]]:
        table = self._table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        me = os.getpid()
        stack, workers, system = list(children.get(me, [])), [], []
        while stack:
            pid = stack.pop()
            stack += children.get(pid, [])
            cmd = table[pid][1]
            is_worker = cmd.startswith("ray::") and not cmd.startswith(_AGENTS)
            (workers if is_worker else system).append(pid)
        return workers, system

    def _loop(self) -> None:
        while not self._stop.is_set():
            workers, system = self._descendants()
            rss = pss = shm = 0
            by_process = []
            for pid in [os.getpid()] + workers:
                r, p, s = _mem_kb(pid)
                rss, pss, shm = rss + r, pss + p, shm + s
                by_process.append((self._table.get(pid, (0, "driver"))[1][:60] if pid != os.getpid() else "driver",
                                   round(r / 1024), round(p / 1024), round(s / 1024)))
            if rss / 1024 > self.peak["rss_mb"]:
                self.at_peak = sorted(by_process, key=lambda t: -t[1])
            self.peak["rss_no_shm_mb"] = max(self.peak["rss_no_shm_mb"], (rss - shm) / 1024)
            sys_rss = sum(_mem_kb(pid)[0] for pid in system)
            self.peak["rss_mb"] = max(self.peak["rss_mb"], rss / 1024)
            self.peak["pss_mb"] = max(self.peak["pss_mb"], pss / 1024)
            self.peak["system_rss_mb"] = max(self.peak["system_rss_mb"], sys_rss / 1024)
            self.peak["workers"] = max(self.peak["workers"], len(workers))
            self.samples += 1
            self._stop.wait(self.period)

    def _store_loop(self) -> None:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        try:
            # This instance's GCS by address: with another Ray instance on the machine the
            # lookup without one is ambiguous and fails.
            state = get_state_from_address(ray.get_runtime_context().gcs_address)
        except Exception as exc:  # the poll must never end the benchmark
            self.store_error = repr(exc)
            return
        while not self._stop.is_set():
            try:
                stats = get_memory_info_reply(state).store_stats
                self.peak["object_store_mb"] = max(self.peak["object_store_mb"], stats.object_store_bytes_used / 2**20)
                self.peak["spilled_mb"] = max(self.peak["spilled_mb"], stats.spilled_bytes_total / 2**20)
            except Exception as exc:  # the poll must never end the benchmark
                self.store_error = repr(exc)
            self._stop.wait(1.0)

    def __enter__(self) -> "MemorySampler":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--shards", type=int, default=100)
    p.add_argument("--labeled", type=int, default=10_000, help="labeled samples (random ids)")
    p.add_argument("--k", type=int, default=10_000)
    p.add_argument("--strategy", default="daal", choices=("daal", "daal_diverse", "cluster_margin"))
    p.add_argument("--seeding-rows", type=int, default=None,
                   help="daal_diverse: candidates per cell of the k-means++ seeding (default: the strategy's)")
    p.add_argument("--compare-workers", action="store_true",
                   help="select twice, Ray Data limited to 1 and to 2 CPUs, and compare the batches")
    p.add_argument("--epochs", type=int, default=2, help="DAAL epochs over its bounded sample")
    p.add_argument("--max-fit-unlabeled", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=8192, help="rows per Ray Data batch")
    p.add_argument("--actors", type=int, default=1, help="scoring actors")
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray instance")
    p.add_argument("--object-store-mb", type=int, default=1024, help="Ray object store size")
    p.add_argument("--footer-actors", type=int, default=1,
                   help="actors Ray Data starts to read parquet footers (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS; "
                        "0 = Ray's default); each is a ~190 MB process while the reads are planned")
    p.add_argument("--scanner-readahead", type=int, default=1,
                   help="RAY_DATA_ARROW_SCANNER_BATCH_READAHEAD (Ray's default 8; 0 = leave it)")
    p.add_argument("--read-bin-mb", type=int, default=32,
                   help="RAY_DATA_PARQUET_BIN_PACKING_BYTES in MB: bytes one read task packs (Ray's default 128; "
                        "0 = leave it)")
    p.add_argument("--keep-allocators", action="store_true",
                   help="leave pyarrow's and glibc's allocators as they are (before `daal-ray score` set them to "
                        "hand freed memory back; see daal_ray.runtime.RETURN_FREED_MEMORY_ENV)")
    p.add_argument("--tmp", default=None, help="where the shards go (default: the system's temp folder)")
    p.add_argument("--keep-pool", default=None, metavar="DIR",
                   help="write the shards to DIR (or reuse them if DIR exists) and keep them (default: a temporary "
                        "folder, deleted at the end)")
    p.add_argument("--out", default="bench/results/pool_10m.json")
    args = p.parse_args()

    import ray
    import torch


    setup_logging()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="pool-10m-", dir=args.tmp))
    pool = Path(args.keep_pool) if args.keep_pool else tmp / "pool"
    try:
        t0 = time.perf_counter()
        reused = pool.exists()
        if not reused:
            write_pool(pool, args.rows, args.dim, args.shards, probs=args.strategy == "cluster_margin")
        write_s = time.perf_counter() - t0
        size_gb = sum(f.stat().st_size for f in pool.iterdir()) / 1e9
        print(f"{'reused' if reused else 'wrote'} {args.rows:,} rows x {args.dim} in {args.shards} shards: "
              f"{size_gb:.2f} GB" + ("" if reused else f" in {write_s:.0f} s"), flush=True)
        labeled = np.sort(np.random.default_rng(1).choice(args.rows, size=args.labeled, replace=False))
        if args.footer_actors:
            os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] = str(args.footer_actors)
        if args.scanner_readahead:
            # Ray Data's own advice for wide tensor columns: one batch of read-ahead per scan.
            os.environ["RAY_DATA_ARROW_SCANNER_BATCH_READAHEAD"] = str(args.scanner_readahead)
        if args.read_bin_mb:
            os.environ["RAY_DATA_PARQUET_BIN_PACKING_BYTES"] = str(args.read_bin_mb * 2**20)
        if args.keep_allocators:
            os.environ[KEEP_ALLOCATORS_ENV] = "1"
        # As `daal-ray score` runs: this process and the Ray workers hand freed memory back.
        return_freed_memory()
        env_vars = worker_memory_env()
        ray.init(address="local", num_cpus=args.num_cpus, object_store_memory=args.object_store_mb * 2**20,
                 include_dashboard=False, logging_level="WARNING",
                 **({"runtime_env": {"env_vars": env_vars}} if env_vars else {}))
        quiet_ray_data()
        # The shards hold features (and probabilities for cluster_margin): DAAL's input is the
        # features alone (confidence_weight=0), selected by ScoreNet's score alone.
        if args.strategy == "cluster_margin":
            params = {}
        else:
            params = {"epochs": args.epochs, "max_fit_unlabeled": args.max_fit_unlabeled, "confidence_weight": 0,
                      "margin_weight": 0.0, "class_balance": False}
            if args.strategy == "daal_diverse" and args.seeding_rows is not None:
                params["seeding_rows"] = args.seeding_rows
        scale = ScaleConfig(inference_batch_size=args.batch_size, inference_actors=args.actors)
        load_before = os.getloadavg()
        runs = []
        data_ctx = ray.data.DataContext.get_current()
        with MemorySampler() as mem:
            for workers in ((1, 2) if args.compare_workers else (None,)):
                if workers is not None:
                    data_ctx.execution_options.resource_limits = ray.data.ExecutionResources(cpu=workers)
                strategy = build_strategy(AcquisitionConfig(args.strategy, params), seed=0, cycle=0)
                t0 = time.perf_counter()
                res = select_from_features(pool, strategy, args.k, labeled_ids=labeled, scale=scale)
                runs.append((workers, time.perf_counter() - t0, res))
        wall, res = runs[0][1], runs[0][2]
        for _, _, r in runs:
            assert r.ids.size == args.k and np.unique(r.ids).size == args.k and not np.isin(r.ids, labeled).any()
        if args.strategy == "daal":
            assert np.all(np.diff(res.scores) <= 0)
        identical = bool(np.array_equal(np.sort(runs[0][2].ids), np.sort(runs[-1][2].ids))) if len(runs) > 1 else None
        row = {"strategy": args.strategy, "params": params, "rows": args.rows, "dim": args.dim, "shards": args.shards,
               "pool_gb": size_gb, "k": args.k,
               "wall_s_by_ray_data_cpus": {str(w): t for w, t, _ in runs},
               "identical_across_1_and_2_workers": identical,
               "labeled": args.labeled, "epochs": args.epochs, "max_fit_unlabeled": args.max_fit_unlabeled,
               "wall_s": wall, "seconds": res.seconds, "rows_per_s_scoring": (args.rows - args.labeled) / res.seconds["score"],
               "peak_driver_workers_rss_mb": mem.peak["rss_mb"], "peak_driver_workers_pss_mb": mem.peak["pss_mb"],
               "peak_driver_workers_rss_without_object_store_pages_mb": mem.peak["rss_no_shm_mb"],
               "peak_ray_system_rss_mb": mem.peak["system_rss_mb"], "peak_object_store_mb": mem.peak["object_store_mb"],
               "spilled_mb": mem.peak["spilled_mb"], "max_worker_processes": mem.peak["workers"],
               "memory_samples": mem.samples, "processes_at_rss_peak": mem.at_peak,
               "object_store_poll_error": getattr(mem, "store_error", None), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
               "args": vars(args)}
        print(json.dumps(row, indent=1))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(row, indent=1))
        print(f"\n{args.strategy}: {args.rows:,} x {args.dim} ({size_gb:.1f} GB on disk), K = {args.k:,}"
              + ("" if args.strategy == "cluster_margin" else
                 f", DAAL {args.epochs} epoch(s) on {args.labeled:,} labeled + {args.max_fit_unlabeled:,} unlabeled"))
        if identical is not None:
            print(f"1 and 2 Ray Data workers: {', '.join(f'{t:.0f} s' for _, t, _ in runs)}; "
                  f"identical batches: {'yes' if identical else 'NO'}")
        print(f"wall {wall:.0f} s (fit incl. sample pass {res.seconds.get('fit', 0):.0f} s, scoring "
              f"{res.seconds['score']:.0f} s, merge {res.seconds['merge']:.2f} s)")
        print(f"peak driver + Ray workers: RSS {mem.peak['rss_mb']:.0f} MB (without mapped object-store pages "
              f"{mem.peak['rss_no_shm_mb']:.0f} MB), PSS {mem.peak['pss_mb']:.0f} MB "
              f"({mem.peak['workers']} worker processes at most); Ray system processes RSS "
              f"{mem.peak['system_rss_mb']:.0f} MB; object store peak {mem.peak['object_store_mb']:.0f} MB, "
              f"spilled {mem.peak['spilled_mb']:.0f} MB")
        print(f"load average before {load_before}, after {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if ray.is_initialized():
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
