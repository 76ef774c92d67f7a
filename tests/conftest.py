"""Shared fixtures: one local Ray instance per test session, tiny run directories."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Local Ray instances of the suite (and of the jobs it starts) run without the dashboard:
# it costs start-up time and CPU on small machines. tests/test_cluster.py starts a head with it.
os.environ.setdefault("DAAL_RAY_DASHBOARD", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from daal_ray.runtime import init_ray

    init_ray(num_cpus=8)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_config():
    """A fast digits experiment: 3 cycles of 3 epochs, in-process training (num_workers=0)."""
    from daal_ray.tuning import plan_experiments

    def make(strategy="random", seed=0, num_workers=0, **protocol):
        protocol = {"initial_fraction": 0.05, "step_fraction": 0.05, "final_fraction": 0.15, **protocol}
        (cfg,) = plan_experiments(dataset="digits", strategies=[strategy], seeds=[seed], protocol=protocol,
                                  train={"epochs": 3}, scale={"num_workers": num_workers})
        return cfg

    return make
