"""Benchmark: the digits main job's wall time, per cycle split into steps, and its
orchestration share.

Runs the main job's experiments (paper protocol, 2 seeds, the job's default strategies)
under several settings in one process, one after another, on one Ray instance:

* ``concurrent``: as the job runs by default (experiments in parallel, inference actors);
* ``sequential``: one experiment at a time, so step times are not inflated by contention;
* ``sequential-tasks``: the same with ``inference_compute=tasks``;
* ``grouped-tasks``: one experiment at a time in ONE Ray Train worker group (no Tune
  trial per experiment), task inference (``jobs/digits.py --concurrency 1``);
* ``lanes-tasks``: two lanes at once, each ONE worker group running half the experiments
  one after another, task inference: what ``jobs/digits.py`` does by default on 2 cores
  (one lane per core);
* ``job``: ``python jobs/digits.py`` itself, as a user runs it (its own Ray start-up and
  defaults), timed from outside; the step sums come from its results file.

Every setting runs the same experiments with the same seeds, so each must end with the same
final metric per experiment; the script checks that and says so.

Orchestration is everything that is not compute: Ray start-up, the Train worker group's
start-up, Ray Data scheduling and actor start-up, Tune trial start-up, ALDriver round trips.
Compute is what a plain single process would also have to do: training and evaluating the
task model on each cycle's labeled set (``train_s``), training the acquisition networks
(``acq_fit_s``, DAAL), and a forward + scoring pass over the pool (timed here, in this
process, with plain PyTorch on one thread). The share is taken of the job's wall time in
the one-at-a-time settings, where the steps do not overlap.

    python bench/digits_main.py                      # the job as a user runs it (~3 min)
    python bench/digits_main.py --settings concurrent,sequential,sequential-tasks,grouped-tasks
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from daal_ray.acquisition import strategy_names
from daal_ray.acquisition.entropy import predictive_entropy
from daal_ray.cli.run import daal_epochs
from daal_ray.data import get_dataset
from daal_ray.models import build_model
from daal_ray.results import read_results
from daal_ray.runtime import init_ray, quiet_ray_data
from daal_ray.tuning import plan_experiments, run_experiments

SETTINGS = {  # scale fields, and whether the experiments share one worker group
    "concurrent": (dict(trial_concurrency=0, inference_compute="actors"), False),
    "sequential": (dict(trial_concurrency=1, inference_compute="actors"), False),
    "sequential-tasks": (dict(trial_concurrency=1, inference_compute="tasks"), False),
    "grouped-tasks": (dict(trial_concurrency=1, inference_compute="tasks"), True),
    "lanes-tasks": (dict(trial_concurrency=2, inference_compute="tasks"), True),
    "job": (dict(trial_concurrency=1, inference_compute="tasks"), True),  # its own process, its own defaults
}
REPO = Path(__file__).resolve().parents[1]


def job_daal_epochs() -> int:
    """``jobs/digits.py``'s default ``--daal-epochs``, read from the job's parser."""
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "digits.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    return int(out.split("DAAL training epochs per cycle (default: ")[1].split(",")[0].split(")")[0])


def pool_pass_seconds(cfg, repeats: int = 5) -> float:
    """Plain-PyTorch time of one forward + entropy pass over the pool, one thread."""
    torch.set_num_threads(1)
    ds = get_dataset(cfg.data)
    ids = ds.sample_ids("train")
    model = build_model(cfg.train.model, num_classes=ds.num_classes, in_channels=ds.in_channels).eval()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(ids), cfg.scale.inference_batch_size):
                chunk = ids[s : s + cfg.scale.inference_batch_size]
                probs = torch.softmax(model(ds.images("train", chunk)), 1).numpy()
                predictive_entropy(probs)
        best = min(best, time.perf_counter() - t0)
    return best


def run_setting(name: str, strategies: list[str], seeds: int, root: Path) -> dict:
    scale, shared = SETTINGS[name]
    configs = plan_experiments(dataset="digits", strategies=strategies, seeds=range(seeds),
                               scale={"num_workers": 1, **scale},
                               strategy_params=daal_epochs(job_daal_epochs()))  # as jobs/digits.py
    t0 = time.perf_counter()
    if name == "job":
        subprocess.run([sys.executable, str(REPO / "jobs" / "digits.py"), "--strategies", ",".join(strategies),
                        "--seeds", str(seeds), "--run-dir", str(root / name), "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        table = read_results(root / name)
    else:
        table = run_experiments(configs, root / name, concurrency=scale["trial_concurrency"],
                                share_worker_group=shared)
    wall = time.perf_counter() - t0
    rows = table.to_pylist()
    fwd = pool_pass_seconds(configs[0])
    steps = {c: float(sum(r[c] for r in rows)) for c in ("train_s", "features_s", "acq_fit_s", "scoring_s",
                                                         "selection_s", "overhead_s", "startup_s", "cycle_s")}
    n_select = sum(1 for r in rows if r["num_selected"] > 0)
    n_cycles = len(rows)
    compute = steps["train_s"] + steps["acq_fit_s"] + n_select * fwd
    per_exp = {}
    for r in rows:
        per_exp.setdefault(r["experiment"], 0.0)
        per_exp[r["experiment"]] += r["cycle_s"] + r["startup_s"]
    return dict(setting=name, experiments=len(configs), cycles=n_cycles, selections=n_select, wall_s=wall, steps=steps,
                pool_pass_s=fwd, compute_s=compute, experiment_s=sum(per_exp.values()),
                metric_at_end={r["experiment"]: r["value"] for r in rows if r["num_selected"] == 0})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="job", help="comma-separated subset of " + ", ".join(SETTINGS))
    p.add_argument("--strategies", default=",".join(s for s in ("random", "entropy", "daal") if s in strategy_names()))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", default="bench/results/digits_main.json")
    p.add_argument("--from-json", default=None, help="re-print the tables of a saved run instead of running")
    args = p.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        report(saved["ray_init_s"], saved["results"])
        return
    t_init = time.perf_counter()
    if args.settings.split(",")[0] != "job":
        init_ray()
        quiet_ray_data()
    ray_init_s = time.perf_counter() - t_init
    root = Path(tempfile.mkdtemp(prefix="daal-bench-"))
    results = []
    try:
        for name in args.settings.split(","):
            # The job starts its own Ray instance: this script's own is shut down first, so
            # its idle processes do not share the two cores with the job's.
            if name == "job" and ray.is_initialized():
                ray.shutdown()
            elif name != "job" and not ray.is_initialized():
                init_ray()
                quiet_ray_data()
            results.append(run_setting(name, args.strategies.split(","), args.seeds, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"ray_init_s": ray_init_s, "results": results}, indent=2))
    report(ray_init_s, results)
    print(f"\nwritten: {out}")


def report(ray_init_s: float, results: list[dict]) -> None:
    print(f"ray.init: {ray_init_s:.1f} s")
    print("| setting | experiments | job wall (s) | sum of experiment walls (s) | compute (s) | "
          "orchestration share of job wall | train | DAAL fit | Train start-up | features | scoring | overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r["steps"]
        # worker groups at once: jobs/digits.py runs one lane per core; a shared in-process setting, its concurrency
        scale, shared = SETTINGS[r["setting"]]
        lanes = (os.cpu_count() or 1) if r["setting"] == "job" else scale["trial_concurrency"] if shared else 1
        # lanes at once: the share of the lanes' time (lanes x wall) that is not compute
        share = "n/a (overlapped)" if r["setting"] == "concurrent" else f"{1 - r['compute_s'] / (lanes * r['wall_s']):.0%}"
        # (the job setting's wall includes its own Ray start-up and the final report)
        print(f"| {r['setting']} | {r['experiments']} | {r['wall_s']:.1f} | {r['experiment_s']:.1f} | "
              f"{r['compute_s']:.1f} | {share} | {s['train_s']:.1f} | {s['acq_fit_s']:.1f} | {s['startup_s']:.1f} | "
              f"{s['features_s']:.1f} | {s['scoring_s']:.1f} | {s['overhead_s']:.1f} |")
    finals = {r["setting"]: r["metric_at_end"] for r in results}
    same = all(f == next(iter(finals.values())) for f in finals.values())
    print("\nfinal metric per experiment: " + ("the same in every setting" if same else f"DIFFERS: {finals}"))
    per_cycle = {r["setting"]: {k: v / r["cycles"] for k, v in r["steps"].items()} for r in results}
    print("\nper cycle (mean over every experiment's cycles, seconds):")
    for name, d in per_cycle.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in d.items()))


if __name__ == "__main__":
    main()
