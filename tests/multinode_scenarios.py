"""Node-loss scenarios on a three-node Ray cluster on this machine (``ray.cluster_utils.Cluster``).

Run by tests/test_multinode.py in a process of its own (the test process is connected to the
suite's single-node Ray): ``python tests/multinode_scenarios.py OUT_DIR``. The cluster is
started once: a head without task resources (as on a real cluster, where the head runs only
Ray's own services) and two worker nodes of 4 CPUs, each with the custom resource
``worker_node`` so a test can keep an actor off the head. Each scenario removes a node in
the middle of real work, the way a preempted spot instance disappears, then adds a
replacement (as an autoscaler would) for the next one, and writes what it observed to
``OUT_DIR/<scenario>.json``; the test compares that with the uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster

from daal_ray import cycle as cycle_mod
from daal_ray import driver as driver_mod
from daal_ray import experiment as experiment_mod
from daal_ray import faults
from daal_ray.acquisition import build_strategy
from daal_ray.config import AcquisitionConfig, DataConfig, ScaleConfig
from daal_ray.data import get_dataset
from daal_ray.driver import NAMESPACE, driver_name
from daal_ray.experiment import run_experiment
from daal_ray.pool import PoolState
from daal_ray.results import read_results
from daal_ray.rundir import STATE_FILE
from daal_ray.runtime import check_reachable_everywhere
from daal_ray.scoring import PoolPredictor, select_from_images, select_topk
from daal_ray.tuning import experiment_complete, plan_experiments, run_sweep

WORKER = {"num_cpus": 4, "resources": {"worker_node": 1}}
logger = logging.getLogger("multinode")


class Nodes:
    """The cluster and its current worker nodes."""

    def __init__(self) -> None:
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        self.workers = [self.cluster.add_node(**WORKER) for _ in range(2)]
        ray.init(address=self.cluster.address, logging_level=logging.WARNING)
        self.cluster.wait_for_nodes()

    def remove(self, node_id: str) -> None:
        node = next(n for n in self.workers if n.node_id == node_id)
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)
        logger.info("removed node %s", node_id[:8])

    def replace(self) -> None:
        """Back to two worker nodes (an autoscaler's replacement)."""
        while len(self.workers) < 2:
            self.workers.append(self.cluster.add_node(**WORKER))
        self.cluster.wait_for_nodes()

    @property
    def worker_ids(self) -> list[str]:
        return [n.node_id for n in self.workers]


def _config(strategy: str, seed: int, num_workers: int, **scale):
    (cfg,) = _configs(strategy, [seed], num_workers, **scale)
    return cfg


def _configs(strategy: str, seeds: list[int], num_workers: int, **scale):
    return plan_experiments(dataset="digits", strategies=[strategy], seeds=seeds,
                            protocol={"initial_fraction": 0.05, "step_fraction": 0.05, "final_fraction": 0.10},
                            train={"epochs": 3}, scale={"num_workers": num_workers, **scale})


_CLEAN: dict[str, Path] = {}


def _clean_run(cfg, out: Path) -> None:
    """The uninterrupted run of ``cfg`` in ``out/clean``, trained in this process, once per
    experiment name: random's batches do not depend on the model, so one run serves every
    scenario of that seed whatever its worker count."""
    if cfg.name not in _CLEAN:
        run_experiment(cfg, out / "clean")
        _CLEAN[cfg.name] = out / "clean"
    elif _CLEAN[cfg.name] != out / "clean":
        (out / "clean").parent.mkdir(parents=True, exist_ok=True)
        (out / "clean").symlink_to(_CLEAN[cfg.name])


def _outcome(run_root: Path, cfg, **extra) -> dict:
    state = PoolState.load(run_root / cfg.name / STATE_FILE)
    results = read_results(run_root / cfg.name)
    return {"labeled_cycle": state.labeled_cycle.tolist(), "label": state.label.tolist(),
            "num_added": [h.num_added for h in state.history], "pending_cycle": state.pending_cycle,
            "result_cycles": results["cycle"].to_pylist(), **extra}


def _driver_node(run_dir: Path) -> str:
    handle = ray.get_actor(driver_name(run_dir), namespace=NAMESPACE)
    return ray.get(handle.node_id.remote())


def aldriver_node(nodes: Nodes, out: Path) -> dict:
    """The node hosting the ALDriver removed between propose and commit, and again while a
    cycle trains (training runs in this process: ``num_workers=0``; the strategy is random,
    whose batches depend on the state the ALDriver keeps, not on the model)."""
    cfg = _config("random", seed=7, num_workers=0)
    _clean_run(cfg, out)
    real_actor, real_oracle, real_fit = driver_mod.ALDriver, cycle_mod.oracle_labels, cycle_mod.fit_task_model

    class OnWorkerNodes:  # keeps the ALDriver off the head, which a test must not remove
        def options(self, **kw):
            return real_actor.options(**kw, resources={"worker_node": 0.001})

    driver_mod.ALDriver = OnWorkerNodes()
    run_dir = (out / "faulty" / cfg.name).resolve()
    removed: list[dict] = []
    calls = {"oracle": 0}

    def remove_drivers_node(when: str) -> None:
        node = _driver_node(run_dir)
        nodes.remove(node)
        pending = PoolState.load(run_dir / STATE_FILE).pending_cycle
        nodes.replace()
        removed.append({"when": when, "node": node, "pending_cycle": pending,
                        "restarted_on": _driver_node(run_dir), "worker_nodes": nodes.worker_ids})

    def oracle(dataset, ids):
        calls["oracle"] += 1
        if calls["oracle"] == 2:  # cycle 1's batch: proposed (durable), not committed
            remove_drivers_node("between propose and commit")
        return real_oracle(dataset, ids)

    def fit(dataset, labeled, *a, **kw):
        if len(removed) == 1:  # the second model trains: cycle 1's
            remove_drivers_node("while cycle 1 trains")
        return real_fit(dataset, labeled, *a, **kw)

    cycle_mod.oracle_labels, cycle_mod.fit_task_model = oracle, fit
    try:
        run_experiment(cfg, out / "faulty")
    finally:
        driver_mod.ALDriver, cycle_mod.oracle_labels, cycle_mod.fit_task_model = real_actor, real_oracle, real_fit
    return {"clean": _outcome(out / "clean", cfg), "faulty": _outcome(out / "faulty", cfg, removed=removed)}


def _wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)


def _recorded_cycles(run_dir: Path) -> list[int]:
    return read_results(run_dir)["cycle"].to_pylist() if (run_dir / "results.parquet").exists() else []


def train_worker_node(nodes: Nodes, out: Path) -> dict:
    """The node hosting one of two Ray Train workers (spread over the two worker nodes)
    removed in cycle 1, its model trained and its checkpoint not yet written (rank 0 held
    there, :func:`daal_ray.faults.arm_hold`, however fast the cycle goes): the group
    restarts on what is left, from the last checkpoint. The strategy is random, whose
    labeled set does not depend on the model, so the uninterrupted run it is compared with
    (shared with the ALDriver scenario) trains in this process."""
    cfg = _config("random", seed=7, num_workers=2, placement_strategy="SPREAD", inference_compute="tasks")
    _clean_run(cfg.replace(scale=cfg.scale.replace(num_workers=0)), out)
    run_dir = (out / "faulty" / cfg.name).resolve()
    log = out / "points.log"
    seen: dict = {}
    real_loop = experiment_mod.experiment_loop

    def holding_loop(config: dict) -> None:  # in each Train worker (pickled by value: this is __main__)
        faults.arm_hold("write:model.pt:2", log)  # cycle 1's checkpoint; a restarted group passes it
        real_loop(config)

    def remove_when_cycle_1_trains() -> None:
        _wait_for(lambda: faults.held_file(log).exists(), "cycle 1 trained")
        seen["checkpoint_0_mtime"] = (run_dir / "checkpoints" / "cycle_000").stat().st_mtime
        victim = nodes.worker_ids[-1]
        nodes.remove(victim)
        seen["removed"] = victim
        faults.release_file(log).touch()  # rank 0, if it was not on that node

    killer = threading.Thread(target=remove_when_cycle_1_trains, daemon=True)
    killer.start()
    experiment_mod.experiment_loop = holding_loop
    try:
        run_experiment(cfg, out / "faulty")
    finally:
        experiment_mod.experiment_loop = real_loop
    killer.join(5)
    checkpoint_0_after = (run_dir / "checkpoints" / "cycle_000").stat().st_mtime
    nodes.replace()
    return {"clean": _outcome(out / "clean", cfg),
            "faulty": _outcome(out / "faulty", cfg, removed=seen.get("removed"),
                               checkpoint_0_retrained=checkpoint_0_after != seen.get("checkpoint_0_mtime"),
                               restarts=_train_restarts(run_dir))}


def _train_restarts(run_dir: Path) -> int:
    """How many times Ray Train started a worker group for the run (from its worker logs)."""
    logs = list(run_dir.glob("worker-rank0.log*"))
    return sum(p.read_text(errors="replace").count("a worker group of") for p in logs)


def scoring_node(nodes: Nodes, out: Path) -> dict:
    """A node hosting one of two Ray Data scoring actors removed mid-scoring. The pool is
    digits' id shards through the task model (``select_from_images``, the path ``daal-ray
    score`` and the cycle's selection take) with K = every unlabeled id, so the merged top-K
    must hold each unlabeled id exactly once (the merge refuses an id seen twice) with the
    score the in-process predictor gives it. The scorer records each batch it starts (its
    node and size) and waits a little per batch, so the removal lands mid-pass."""
    import torch

    from daal_ray.models import build_model

    out.mkdir(parents=True, exist_ok=True)
    data = DataConfig()
    ids = get_dataset(data).sample_ids("train")
    labeled = ids[::10]
    torch.manual_seed(0)
    checkpoint = out / "model.pt"
    torch.save(build_model("small_cnn", num_classes=10, in_channels=1).state_dict(), checkpoint)
    shards = out / "ids"
    shards.mkdir()
    for i, part in enumerate(np.array_split(np.random.default_rng(0).permutation(ids), 8)):
        pq.write_table(pa.table({"sample_id": part}), shards / f"part-{i}.parquet")
    entropy = build_strategy(AcquisitionConfig(strategy="entropy"), seed=0, cycle=0)
    k = ids.size - labeled.size

    predictor = PoolPredictor(data.to_dict(), "small_cnn", 10, 1, str(checkpoint))
    want_ids, want_scores, _ = select_topk(predictor({"sample_id": ids, "labeled": np.isin(ids, labeled)}), entropy, k)

    started = out / "started"
    started.mkdir()

    class RecordingEntropy(type(entropy)):
        def score(self, batch):
            node = ray.get_runtime_context().get_node_id()
            (started / f"{node}-{os.getpid()}-{time.monotonic_ns()}").write_text(str(len(batch["sample_id"])))
            time.sleep(0.2)
            return super().score(batch)

    slow = RecordingEntropy.__new__(RecordingEntropy)
    slow.__dict__.update(entropy.__dict__)
    seen: dict = {}

    def records() -> list[tuple[int, str, int]]:
        """(start time, node, rows) of every batch started so far (a file still empty, being
        written, is left for the next look)."""
        found = [(int(p.name.split("-")[2]), p.name.split("-")[0], p.read_text()) for p in started.iterdir()]
        return [(t, node, int(rows)) for t, node, rows in sorted(found) if rows]

    def remove_a_scoring_node() -> None:
        _wait_for(lambda: len(records()) >= 4, "4 scored batches")
        before = records()
        victim = next(n for _, n, _ in before if n in nodes.worker_ids)
        nodes.remove(victim)  # its raylet killed; its worker processes go when they see it gone
        seen.update(removed=victim, removed_at=time.monotonic_ns(),
                    victim_batches=sum(n == victim for _, n, _ in before))

    killer = threading.Thread(target=remove_a_scoring_node, daemon=True)
    killer.start()
    got = select_from_images(shards, slow, k, labeled, data=data, model_name="small_cnn", num_classes=10,
                             in_channels=1, checkpoint=str(checkpoint),
                             scale=ScaleConfig(inference_batch_size=32, inference_actors=2))
    killer.join(5)
    nodes.replace()
    after = records()
    return {"want_ids": want_ids.tolist(), "want_scores": want_scores.tolist(), "got_ids": got.ids.tolist(),
            "got_scores": got.scores.tolist(), "num_unlabeled": int(k), **seen,
            "rows_started": sum(n for _, _, n in after), "batches": len(after),
            "nodes_after": sorted({n for t, n, _ in after if t > seen.get("removed_at", t)})}


def sweep_trial_node(nodes: Nodes, out: Path) -> dict:
    """A sweep of two trials, one at a time; once the first has finished and the second has
    recorded its cycle 0, the node hosting the second trial's process is removed. Tune
    retries that trial, which resumes its experiment from the committed cycle; the finished
    trial is not run again. The second trial (random, seed 7) is compared with the
    uninterrupted run the other scenarios share."""
    first, second = _configs("random", [8, 7], num_workers=1)
    first = first.replace(train=first.train.replace(epochs=1))  # it only has to finish
    second = second.replace(train=second.train.replace(epochs=6))  # the removal lands before it ends
    _clean_run(second.replace(scale=second.scale.replace(num_workers=0)), out)
    root = (out / "faulty").resolve()
    seen: dict = {}

    def remove_the_second_trials_node() -> None:
        second_dir = root / second.name
        _wait_for(lambda: experiment_complete(first, root) and _recorded_cycles(second_dir) == [0],
                  "the first trial done, the second at cycle 0")
        seen["first_results_mtime"] = (root / first.name / "results.parquet").stat().st_mtime_ns
        trials = [a for a in ray._private.state.actors().values()  # Tune's function trainables
                  if a["State"] == "ALIVE" and "ImplicitFunc" in a.get("ActorClassName", "")]
        victim = trials[0]["Address"]["NodeID"]
        seen.update(removed=victim, trial_actors_alive=len(trials))
        nodes.remove(victim)  # the retry runs on the node left; the replacement comes after

    killer = threading.Thread(target=remove_the_second_trials_node, daemon=True)
    killer.start()
    run_sweep([first, second], root, sweep_name="multinode", concurrency=1)
    killer.join(5)
    return {"clean": _outcome(out / "clean", second), "faulty": _outcome(root, second, **seen),
            "first_results_mtime_after": (root / first.name / "results.parquet").stat().st_mtime_ns,
            "first_restarts": _train_restarts(root / first.name), "second_restarts": _train_restarts(root / second.name),
            "first_cycles": read_results(root / first.name)["cycle"].to_pylist()}


def storage_check(nodes: Nodes, out: Path) -> dict:
    """The run-directory check reaches every node of the cluster."""
    out.mkdir(parents=True, exist_ok=True)
    return {"checked_nodes": check_reachable_everywhere(out), "alive_nodes": len([n for n in ray.nodes()
                                                                                  if n["Alive"]])}


SCENARIOS = {"storage_check": storage_check, "aldriver_node": aldriver_node, "train_worker_node": train_worker_node,
             "scoring_node": scoring_node, "sweep_trial_node": sweep_trial_node}


def main(out_dir: str, names: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(out_dir)
    nodes = Nodes()
    for name in names or list(SCENARIOS):
        nodes.replace()  # two worker nodes to start from (a no-op unless the last scenario ended short)
        t0 = time.perf_counter()
        try:
            result = SCENARIOS[name](nodes, out / name)
        except BaseException:  # recorded for the test to show; the next scenario still runs
            result = {"error": traceback.format_exc()}
            nodes.replace()
        result["seconds"] = time.perf_counter() - t0
        (out / f"{name}.json").write_text(json.dumps(result, default=lambda o: np.asarray(o).tolist()))
        logger.info("scenario %s: %.1f s%s", name, result["seconds"], " (error)" if "error" in result else "")
    ray.shutdown()
    nodes.cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
