"""Sweeps (daal_ray.tuning): equal initial pools across strategies and budgets, completion
detection, and a real sweep killed with SIGKILL after its first trial finishes, then
resumed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from daal_ray import faults
from daal_ray.cycle import initial_pool
from daal_ray.data import open_dataset
from daal_ray.errors import ConfigError
from daal_ray.pool import PoolState
from daal_ray.results import RESULTS_FILE, SCHEMA, read_results, upsert_rows
from daal_ray.rundir import STATE_FILE
from daal_ray.tuning import (
    experiment_complete,
    parse_strategy,
    plan_experiments,
    plan_sweep,
    run_sweep,
    worker_group_lanes,
)


# --------------------------------------------------------------------------- equal footing
def test_initial_pool_depends_on_seed_only_not_on_strategy_or_budget():
    configs = plan_experiments(dataset="digits", strategies=["random", "entropy"], seeds=[0, 1], budgets=[30, 90])
    assert len(configs) == 8
    pool = open_dataset(configs[0].data).sample_ids("train")
    assert pool.size == 1438  # digits: 1797 images, 359 held out for testing
    pools = {}
    for cfg in configs:
        n_initial, per_cycle, _ = cfg.schedule(pool.size)
        assert n_initial == 144 and per_cycle == cfg.budget  # round(0.10 * 1438); the budget sets K only
        pools.setdefault(cfg.seed, []).append(initial_pool(pool, n_initial, cfg.seed))
    for seed, same in pools.items():
        assert len(same) == 4
        assert all(np.array_equal(same[0], p) for p in same[1:]), seed
        assert same[0].size == 144 and np.unique(same[0]).size == 144 and np.isin(same[0], pool).all()
    assert not np.array_equal(pools[0][0], pools[1][0])


def test_plan_sweep_over_datasets_and_names():
    configs = plan_sweep(["digits"], strategies=["random", "entropy"], seeds=[0, 1], budgets=[30, 90])
    assert sorted(c.name for c in configs) == sorted(
        f"digits-{s}-seed{seed}-budget{b}" for s in ("random", "entropy") for seed in (0, 1) for b in (30, 90))
    with pytest.raises(ConfigError, match="repeats an experiment"):
        plan_sweep(["digits", "digits"], strategies=["random"])


def test_strategy_variants_for_ablations():
    assert parse_strategy("entropy") == ("entropy", {}, "")
    assert parse_strategy("daal[use_rdis=false;epochs=5]") == ("daal", {"use_rdis": False, "epochs": 5},
                                                               "use_rdis=false-epochs=5")
    configs = plan_experiments(dataset="digits", strategies=["daal", "daal[use_rdis=false]"], seeds=[0],
                               strategy_params={"daal": {"epochs": 3}})
    assert [c.name for c in configs] == ["digits-daal-seed0", "digits-daal-use_rdis=false-seed0"]
    assert [c.acquisition.params for c in configs] == [{"epochs": 3}, {"epochs": 3, "use_rdis": False}]
    for bad, message in (("daal[use_rdis]", "is not key=value"), ("da al", "must be NAME or NAME"),
                         ("daal[nope=1]", "unknown key 'nope'")):
        with pytest.raises(ConfigError, match=message):
            plan_experiments(dataset="digits", strategies=[bad])


def _override_everything(value_of) -> str:
    """A ``daal_paper[...]`` spec setting every one of its params (the longest override set)."""
    import dataclasses
    import json

    from daal_ray.acquisition.daal import DAALPaperParams

    return "daal_paper[" + ";".join(f"{f.name}={json.dumps(value_of(f.name, getattr(DAALPaperParams(), f.name)))}"
                                    for f in dataclasses.fields(DAALPaperParams)) + "]"


def _other(name, default):
    if isinstance(default, bool):
        return default if name == "use_udis" else not default  # one discriminator must stay
    if isinstance(default, (int, float)) and name not in ("sigma", "dropout", "vae_dropout"):
        return default + 1
    return default


def test_names_stay_bounded_with_every_param_overridden(tmp_path):
    from daal_ray.config import MAX_NAME_LEN
    from daal_ray.rundir import CONFIG_FILE, prepare_run_dir

    long_spec = _override_everything(_other)
    # the same overrides but one value: a distinct experiment that must get a distinct name
    other_spec = long_spec.replace("latent_dim=33", "latent_dim=34")
    assert len(long_spec) > 400 and other_spec != long_spec
    configs = plan_experiments(dataset="digits", strategies=[long_spec, other_spec], seeds=[3], budgets=[30])
    names = [c.name for c in configs]
    assert len(set(names)) == 2
    for name in names:
        assert len(name) <= MAX_NAME_LEN
        assert name.startswith("digits-daal_paper-epochs=31-batch_size=129-lr=1.0005") and name.endswith("-seed3-budget30")
    for cfg in configs:  # the run directory can be made, and keeps the whole config
        prepare_run_dir(tmp_path / cfg.name, cfg)
        saved = (tmp_path / cfg.name / CONFIG_FILE).read_text()
        assert '"latent_dim": 33' in saved or '"latent_dim": 34' in saved
    # a short variant keeps its plain readable name
    short = plan_experiments(dataset="digits", strategies=["daal[use_rdis=false]"], seeds=[0])[0]
    assert short.name == "digits-daal-use_rdis=false-seed0"
    with pytest.raises(ConfigError, match=f"at most {MAX_NAME_LEN} bytes"):
        configs[0].replace(name="x" * (MAX_NAME_LEN + 1))


def test_a_run_started_under_other_strategy_defaults_is_refused_on_resumption(tmp_path):
    """config.json names only the params given; the params as started, defaults filled in,
    are saved beside it, so a run resumed after a default changed (here daal's selection
    score, which read ScoreNet alone before) is refused with the changes named, and a
    resumption under the same defaults goes on."""
    import json

    from daal_ray.experiment import _strategy_params
    from daal_ray.rundir import STRATEGY_PARAMS_FILE, prepare_run_dir

    cfg = plan_experiments(dataset="digits", strategies=["daal"], seeds=[0])[0]
    run_dir = tmp_path / cfg.name
    prepare_run_dir(run_dir, cfg, *_strategy_params(cfg))
    prepare_run_dir(run_dir, cfg, *_strategy_params(cfg))  # the same defaults: resumes
    path = run_dir / STRATEGY_PARAMS_FILE
    saved = json.loads(path.read_text())
    assert saved["epochs"] == 30 and saved["margin_weight"] == 0.8 and saved["class_balance"] is True
    # A run-length param's default changing is no reason to refuse, nor a param the version
    # that started the run did not have.
    older = {k: v for k, v in saved.items() if k != "profile_size"}
    path.write_text(json.dumps({**older, "checkpoint_every_s": 5.0}))
    prepare_run_dir(run_dir, cfg, *_strategy_params(cfg))
    # What a run started before the change saved.
    path.write_text(json.dumps({**saved, "margin_weight": 0.0, "class_balance": False}))
    with pytest.raises(ConfigError, match=r"class_balance: False -> True, margin_weight: 0\.0 -> 0\.8.*"
                                          r"class_balance=false, margin_weight=0\.0"):
        prepare_run_dir(run_dir, cfg, *_strategy_params(cfg))
    assert json.loads(path.read_text())["margin_weight"] == 0.0  # the refused run wrote nothing


def test_experiments_are_dealt_into_lanes_round_robin(tiny_config):
    configs = [tiny_config(s, seed=seed) for s in ("random", "entropy", "daal") for seed in (0, 1)]
    lanes = worker_group_lanes(configs, 2)
    assert [[c.name for c in lane] for lane in lanes] == [[c.name for c in configs[0::2]],
                                                          [c.name for c in configs[1::2]]]
    assert {c.seed for c in lanes[0]} == {0} and {c.seed for c in lanes[1]} == {1}  # one seed of each strategy
    assert [len(lane) for lane in worker_group_lanes(configs, 10)] == [1] * 6  # never an empty lane
    assert [len(lane) for lane in worker_group_lanes(configs, 1)] == [6]


def test_sweep_refuses_in_process_training(tmp_path):
    configs = plan_experiments(dataset="digits", strategies=["random"], scale={"num_workers": 0})
    with pytest.raises(ConfigError, match=r"num_workers \(--num-workers\) >= 1"):
        run_sweep(configs, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything is written


def _row(cycle, num_selected, experiment="e"):
    return {"experiment": experiment, "strategy": "random", "dataset": "digits", "seed": 0, "budget": 72,
            "cycle": cycle, "num_labeled": 72 * (cycle + 1), "labeled_fraction": 0.05 * (cycle + 1),
            "metric": "accuracy", "value": 0.5, "num_selected": num_selected}


def test_experiment_complete_needs_every_cycle_and_the_final_row(tmp_path):
    (cfg,) = plan_experiments(dataset="digits", strategies=["random"])
    path = tmp_path / cfg.name / RESULTS_FILE
    assert not experiment_complete(cfg, tmp_path)  # nothing yet
    upsert_rows(path, [_row(0, 72), _row(1, 72)])
    assert not experiment_complete(cfg, tmp_path)  # still selecting
    upsert_rows(path, [_row(3, 0)])
    assert not experiment_complete(cfg, tmp_path)  # cycle 2 missing
    upsert_rows(path, [_row(2, 72)])
    assert experiment_complete(cfg, tmp_path)


# --------------------------------------------------------------------------- kill and resume
STRATEGIES, SEEDS, CYCLES = ("random", "entropy"), (0,), (0, 1)


def _sweep_command(run_dir: Path) -> list[str]:
    # One trial at a time: on 2 cores two at once are no faster, and the kill then always
    # comes with the first trial complete and the others not.
    return [sys.executable, "-m", "daal_ray.cli", "sweep", "--dataset", "digits", "--strategy", ",".join(STRATEGIES),
            "--seeds", str(len(SEEDS)), "--initial-fraction", "0.05", "--final-fraction", "0.10", "--epochs", "1",
            "--num-workers", "1", "--concurrency", "1", "--inference-compute", "tasks", "--num-cpus", "8",
            "--run-dir", str(run_dir)]


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            children.setdefault(_ppid(int(entry.name)), []).append(int(entry.name))
    out, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _wait_gone(pids: list[int], timeout_s: float = 60.0) -> None:
    """Wait until none of ``pids`` runs any more (reaped or a zombie)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of the killed sweep still run: {alive}")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    env["RAY_AUTH_MODE"] = "disabled"
    return env


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_sweep_killed_after_first_trial_resumes_without_redoing(tmp_path):
    run_dir = tmp_path / "sweep"
    configs = plan_experiments(dataset="digits", strategies=list(STRATEGIES), seeds=SEEDS,
                               protocol={"initial_fraction": 0.05, "final_fraction": 0.10})
    names = {c.name: c for c in configs}
    assert len(names) == 2

    # 1. Run the sweep in its own process group; SIGKILL the group once one trial is complete
    # and the other has recorded its cycle 0: the 3rd results row, where the second trial is
    # held (daal_ray.faults) however fast the trials go.
    points = tmp_path / "points.log"
    hold = {faults.HOLD_ENV: "written:results.parquet:3", faults.LOG_ENV: str(points)}
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(_sweep_command(run_dir), stdout=log, stderr=subprocess.STDOUT, env={**_env(), **hold},
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 540
            while not faults.held_file(points).exists():
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no trial finished in time"
                time.sleep(0.2)
        finally:
            # The whole sweep dies at once: its process group and every process it started
            # (Ray's raylet and workers, which may sit in groups of their own).
            tree = _descendants(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            _wait_gone(tree)
    # What the kill left: one trial finished, the other at cycle 0.
    finished = {n: (run_dir / n / RESULTS_FILE).read_bytes()
                for n, c in names.items() if experiment_complete(c, run_dir)}
    assert len(finished) == 1, "one trial finished before the kill, the other left to resume"

    # 2. Re-run the same sweep: finished trials are skipped, the rest resume, every row once.
    second = subprocess.run(_sweep_command(run_dir), capture_output=True, text=True, env=_env(), timeout=540)
    out = second.stdout + second.stderr
    (tmp_path / "second.log").write_text(out)
    assert second.returncode == 0, out[-4000:]
    assert f"{len(finished)} of 2 experiment(s) already complete, skipped" in out, [
        line for line in out.splitlines() if "daal_ray" in line]
    for name in finished:  # not redone: the results file is byte for byte what it was
        assert (run_dir / name / RESULTS_FILE).read_bytes() == finished[name]
        assert f"{name}  cycle" not in out
    # live progress of the trials that ran: one line per recorded cycle, and no Tune tables
    for name in set(names) - set(finished):
        assert f"{name}  cycle 1/1  144 labeled (10.0%)  accuracy" in out, out[-4000:]
    assert "Configuration for experiment" not in out and "Trial status" not in out

    table = read_results(run_dir)
    keys = sorted(zip(table["strategy"].to_pylist(), table["seed"].to_pylist(), table["cycle"].to_pylist()))
    assert keys == sorted((s, seed, c) for s in STRATEGIES for seed in SEEDS for c in CYCLES)
    assert table.num_rows == 4
    assert table["num_labeled"].to_pylist() == [72, 144] * 2  # sorted by strategy, seed, cycle
    # each selected batch's redundancy was recorded, for random too
    selecting = table.filter(pc.greater(table["num_selected"], 0))
    assert selecting.num_rows == 2
    assert all(-1.0 <= c <= 1.0 for c in selecting["batch_cosine"].to_pylist())
    assert all(0.0 < e <= 1.0 for e in selecting["batch_class_entropy"].to_pylist())

    # Equal footing: one initial pool per seed, whatever the strategy.
    for seed in SEEDS:
        first = [PoolState.load(run_dir / f"digits-{s}-seed{seed}" / STATE_FILE).ids_of_cycle(0) for s in STRATEGIES]
        assert first[0].size == 72 and np.array_equal(first[0], first[1])
    assert (run_dir / "report" / "report.txt").exists()
    assert SCHEMA.names == table.schema.names
