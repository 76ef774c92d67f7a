"""The paper's CIFAR job scripts (jobs/cifar10.py, jobs/cifar100.py, built on
daal_ray.cli.paper_job) on a tiny fixture in the official layout: every strategy is
accepted with the paper's protocol, and (Ray) the CIFAR-10 smoke test runs to the end."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from strategy_helpers import check_invariants, state_of

from daal_ray.acquisition import strategy_names
from daal_ray.cli.run import configs_from_args

ROOT = Path(__file__).resolve().parents[1]


def _load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fake_cifar(root: Path, name: str, n_train: int = 40, n_test: int = 12) -> None:
    rng = np.random.default_rng(0)
    classes = 10 if name == "cifar10" else 100
    key = b"labels" if name == "cifar10" else b"fine_labels"

    def batch(n):
        return {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                key: [int(v) for v in rng.integers(0, classes, size=n)]}

    if name == "cifar10":
        base = root / "cifar-10-batches-py"
        base.mkdir(parents=True)
        for i in range(1, 6):
            (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train // 5), protocol=2))
        (base / "test_batch").write_bytes(pickle.dumps(batch(n_test), protocol=2))
    else:
        base = root / "cifar-100-python"
        base.mkdir(parents=True)
        (base / "train").write_bytes(pickle.dumps(batch(n_train), protocol=2))
        (base / "test").write_bytes(pickle.dumps(batch(n_test), protocol=2))


@pytest.mark.parametrize("name", ["cifar10", "cityscapes"])
def test_paper_jobs_run_both_daals_under_their_own_names(name, tmp_path):
    """The paper jobs run the project's daal and daal_paper side by side, each named apart
    in its experiments (and so in every results row and figure), and the peers' baselines."""
    job = _load_job(name)
    args = job.JOB.parse_args(["--data-root", str(tmp_path)])
    wanted = {"random", "entropy", "margin", "daal", "daal_paper"}
    assert wanted <= set(args.strategies.split(","))
    configs = configs_from_args(args, dataset=name, strategy_params=job.JOB.strategy_params(args))
    by_strategy = {c.acquisition.strategy: c for c in configs if c.seed == 0}
    assert by_strategy["daal"].name == f"{name}-daal-seed0"
    assert by_strategy["daal_paper"].name == f"{name}-daal_paper-seed0"
    assert by_strategy["daal_paper"].acquisition.params == by_strategy["daal"].acquisition.params  # epochs only
    if name == "cifar10":
        assert {"least_confidence", "bald", "bald_power", "cluster_margin", "badge"} <= set(by_strategy)


def test_the_digits_comparison_runs_every_baseline_and_both_daals():
    job = _load_job("digits")
    assert {"random", "entropy", "margin", "least_confidence", "bald", "bald_power", "cluster_margin", "badge",
            "daal", "daal_paper"} <= set(job.COMPARE_STRATEGIES)
    assert {"random", "entropy", "margin", "daal"} == set(job.DEFAULT_STRATEGIES)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_jobs_accept_every_strategy(name, tmp_path):
    _fake_cifar(tmp_path, name)
    job = _load_job(name)
    names = strategy_names()
    args = job.build_parser().parse_args(["--data-root", str(tmp_path), "--strategy", ",".join(names)])
    configs = configs_from_args(args, dataset=name, strategy_params=job.strategy_params(args))
    assert args.seeds == 3 and len(configs) == 3 * len(names)  # the paper's 3 repeats
    assert {c.acquisition.strategy for c in configs} == set(names)
    for c in configs:
        assert c.data.name == name and c.data.root == str(tmp_path)
        assert c.train.model == "wrn28_2" and c.train.epochs == 150 and c.train.milestones == (80, 120)
        assert (c.initial_fraction, c.step_fraction, c.final_fraction) == (0.10, 0.05, 0.40)
    daal = next(c for c in configs if c.acquisition.strategy == "daal")
    assert daal.acquisition.params["epochs"] == 150
    with pytest.raises(SystemExit):
        job.build_parser().parse_args(["--no-such-flag"])


@pytest.mark.ray
def test_cifar10_job_smoke_test_runs_on_a_tiny_fixture(ray_session, tmp_path, capsys):
    _fake_cifar(tmp_path / "data", "cifar10", n_train=40, n_test=10)
    job = _load_job("cifar10")
    rc = job.main(["--smoke-test", "--data-root", str(tmp_path / "data"), "--run-dir", str(tmp_path / "runs"),
                   "--strategy", "coreset", "--num-workers", "0", "--batch-size", "16", "--concurrency", "1"])
    assert rc == 0
    state = state_of(tmp_path / "runs", type("C", (), {"name": "cifar10-coreset-seed0"})())
    assert len(state.history) >= 2
    check_invariants(state, state.history[1].num_added)
