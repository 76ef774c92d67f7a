"""Shared fixtures: one local Ray instance per test session, tiny run directories.

Tiers (README: Tests): a test that starts Ray carries the ``ray`` mark, and an end-to-end
one (real Ray Train worker groups, jobs in subprocesses, a cluster) also ``slow``, so
``pytest -m "not ray and not slow"`` is the fast tier. The marks are enforced here: a
test that asks for the Ray fixture, or leaves Ray running when it did not find it so,
without the ``ray`` mark fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import ray

from daal_ray.runtime import init_ray
from daal_ray.tuning import plan_experiments

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Local Ray instances of the suite (and of the jobs it starts) run without the dashboard:
# it costs start-up time and CPU on small machines. tests/test_cluster.py starts a cluster with it.
os.environ.setdefault("DAAL_RAY_DASHBOARD", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray


    init_ray(num_cpus=8)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_config():
    """A fast digits experiment: 3 cycles of 3 epochs, in-process training (num_workers=0),
    the pool's inference in Ray Data tasks as the digits and Cityscapes jobs run it (a warm
    worker process takes every batch: an actor pool starts a process, torch and the model
    for each pass, 14-23 s of a 2-core machine's time, where the pass itself is under a
    second). ``inference_compute="actors"`` for the actor pool (the library's default)."""
    def make(strategy="random", seed=0, num_workers=0, inference_compute="tasks", **protocol):
        protocol = {"initial_fraction": 0.05, "step_fraction": 0.05, "final_fraction": 0.15, **protocol}
        (cfg,) = plan_experiments(dataset="digits", strategies=[strategy], seeds=[seed], protocol=protocol,
                                  train={"epochs": 3}, scale={"num_workers": num_workers,
                                                              "inference_compute": inference_compute})
        return cfg

    return make


@pytest.fixture
def digits_predictor(tmp_path):
    """``build(**options)``: a pool predictor of an untrained, seeded digits ``small_cnn``
    (saved as the cycle checkpoint), with predictor options; ``build.model`` is that model."""
    import torch

    from daal_ray.config import DataConfig
    from daal_ray.models import build_model
    from daal_ray.scoring import PoolPredictor

    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    torch.save(model.state_dict(), tmp_path / "model.pt")

    def build(**options):
        return PoolPredictor(DataConfig().to_dict(), "small_cnn", 10, 1, str(tmp_path / "model.pt"), **options)

    build.model = model.eval()
    return build


# The order xdist hands the test files out in (pyproject.toml passes --no-loadscope-reorder,
# which keeps it): the longest files first, as measured, so the two workers end together;
# then the rest. The multi-node scenarios start with the session in a process of their own
# and tests/test_multinode.py only waits for them, so it goes last, after the other files
# have run meanwhile; the real three-node cluster of tests/test_cluster.py waits until the
# scenarios' cluster is gone (two clusters of three nodes at once on a small machine slow
# each other down more than they overlap), so it comes after them.
LONGEST_FIRST = ("test_experiment.py", "test_daal.py", "test_reliability.py", "test_crash_points.py",
                 "test_tuning.py", "test_progress.py", "test_head_loss.py", "test_tracking.py",
                 "test_selection_workers.py", "test_label_studio_server.py", "test_pressure.py")
LAST = ("test_multinode.py", "test_cluster.py")


def _file_rank(item) -> tuple[int, int]:
    name = Path(str(item.fspath)).name
    if name in LONGEST_FIRST:
        return 0, LONGEST_FIRST.index(name)
    return (2, LAST.index(name)) if name in LAST else (1, 0)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_file_rank)  # stable: each file's tests keep their order
    unmarked = [item.nodeid for item in items
                if "ray_session" in getattr(item, "fixturenames", ()) and item.get_closest_marker("ray") is None]
    if unmarked:
        raise pytest.UsageError("tests that use the Ray fixture need the `ray` mark: " + ", ".join(unmarked))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    before = ray.is_initialized()
    try:
        return (yield)
    finally:
        if not before and ray.is_initialized() and item.get_closest_marker("ray") is None:
            pytest.fail(f"{item.nodeid} started Ray without the `ray` mark; mark it (and `slow` if it is end to "
                        f"end)", pytrace=False)


def _worker() -> str | None:
    """This process's pytest-xdist worker name (``gw0``, ...), or None without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def shared_scenarios_dir(controller_pid: int | None = None) -> Path:
    """Where the multi-node scenarios of this run write, shared by every xdist worker of
    it: keyed by the controller's pid (every worker's parent)."""
    pid = os.getppid() if controller_pid is None else controller_pid
    return Path(tempfile.gettempdir()) / f"daal-ray-multinode-{pid}"


def pytest_collection_finish(session):
    """The multi-node scenarios run in a process of their own for a few minutes, most of
    it waiting on Ray's processes: start them with the session, so they overlap the other
    tests; tests/test_multinode.py waits for them. Under xdist every worker collects every
    test; the first to create the shared directory starts them, once for the whole run."""
    if session.config.option.collectonly or not any(i.nodeid.startswith("tests/test_multinode.py")
                                                   for i in session.items):
        return
    from test_multinode import start_scenarios

    if _worker() is None:
        out = Path(tempfile.mkdtemp(prefix="multinode-"))
        session.config.multinode_scenarios = (out, start_scenarios(out))
        return
    out = shared_scenarios_dir()
    try:
        out.mkdir()
    except FileExistsError:
        return  # another worker started them
    proc = start_scenarios(out, rc_file=True)
    (out / "pid").write_text(str(proc.pid))


def pytest_sessionfinish(session):
    """Stop the scenarios' process if the session ends before it did (-x, Ctrl-C); under
    xdist the controller does it, once every worker is done."""
    started = getattr(session.config, "multinode_scenarios", None)
    if started is not None and started[1].poll() is None:
        os.killpg(started[1].pid, signal.SIGKILL)
    if _worker() is None:
        shared = shared_scenarios_dir(os.getpid())
        if shared.exists():
            if not (shared / "rc").exists() and (shared / "pid").exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.killpg(int((shared / "pid").read_text()), signal.SIGKILL)
            shutil.rmtree(shared, ignore_errors=True)
