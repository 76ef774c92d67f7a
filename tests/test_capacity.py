"""What an experiment holds at once, and refusing settings that would wait forever.

No Ray: the cluster's resources are given (``ray.cluster_resources`` is replaced), so the
arithmetic and the messages are checked exactly; the subprocess test in
test_labeling.py runs the refused and the accepted setting for real.
"""

from __future__ import annotations

import logging

import pytest

from daal_ray import runtime
from daal_ray.errors import ConfigError
from daal_ray.settings import ScaleConfig


@pytest.fixture
def cluster(monkeypatch):
    """Pretend Ray runs with the resources (and locality) the test sets."""
    state = {"resources": {"CPU": 8.0}, "local": True}
    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(runtime.ray, "cluster_resources", lambda: dict(state["resources"]))
    monkeypatch.setattr(runtime, "_cluster_is_local", lambda: state["local"])
    return state


def test_an_experiment_holds_its_workers_and_the_scoring_they_start():
    assert runtime.experiment_demand(ScaleConfig()) == {"CPU": 2 + 1 + 1}  # 2 workers, 1 actor, 1 scoring task
    assert runtime.experiment_demand(ScaleConfig(num_workers=1, inference_actors=3, cpus_per_inference_actor=2)) == \
        {"CPU": 1 + 6 + 2}
    assert runtime.experiment_demand(ScaleConfig(num_workers=0, inference_compute="tasks",
                                                 cpus_per_inference_actor=0)) == {"CPU": 1}
    assert runtime.experiment_demand(ScaleConfig(num_workers=2, use_gpu=True, gpus_per_worker=1,
                                                 gpus_per_inference_actor=0.5, inference_actors=2)) == \
        {"CPU": 2 + 2 + 1, "GPU": 2 + 1}


def test_as_many_as_fit_and_a_request_that_fits_are_kept(cluster):
    scale = ScaleConfig()  # 4 CPUs each
    assert runtime.fit_concurrency(scale, 0) == 2
    assert runtime.fit_concurrency(scale, 1) == 1 and runtime.fit_concurrency(scale, 2) == 2
    cluster["resources"] = {"CPU": 7.99}
    assert runtime.fit_concurrency(scale, 0) == 1
    assert runtime.fit_concurrency(scale, 0, extra_cpu=0.01) == 1
    cluster["resources"] = {"CPU": 8.0}
    assert runtime.fit_concurrency(scale, 0, extra_cpu=0.01) == 1, "two trials' own 0.02 CPU leave too little"


def test_too_many_at_once_is_refused_naming_the_concurrency_that_fits(cluster):
    with pytest.raises(ConfigError) as ei:
        runtime.fit_concurrency(ScaleConfig(), 3, what="sweep s")
    text = str(ei.value)
    assert "sweep s needs 12 CPU at once (3 experiment(s)" in text and "the Ray cluster has 8 CPU" in text
    assert "run at most 2 at once (--concurrency 2)" in text and "--num-cpus 12 or more" in text


def test_one_that_does_not_fit_is_refused_on_a_local_instance_and_warned_about_on_a_joined_one(cluster, caplog):
    cluster["resources"] = {"CPU": 1.0}
    scale = ScaleConfig(num_workers=1)
    with pytest.raises(ConfigError) as ei:
        runtime.fit_concurrency(scale, 1)
    assert ("needs 3 CPU at once (1 experiment(s), each: 1 Train worker(s) x 1 CPU; 2 CPU for the pool's Ray Data "
            "inference and scoring") in str(ei.value) and "--num-cpus 3 or more" in str(ei.value)
    cluster["local"] = False  # an autoscaler may add nodes: the run goes on, with a warning
    with caplog.at_level(logging.WARNING, logger="daal_ray.runtime"):
        assert runtime.fit_concurrency(scale, 0) == 1
    assert "unless an autoscaler adds nodes" in caplog.text


def test_gpus_the_cluster_lacks_are_named(cluster):
    with pytest.raises(ConfigError, match="run where GPUs are \\(the cluster has 0\\), or drop --use-gpu"):
        runtime.fit_concurrency(ScaleConfig(use_gpu=True, num_workers=1), 1)
    cluster["resources"] = {"CPU": 16.0, "GPU": 2.0}
    assert runtime.fit_concurrency(ScaleConfig(use_gpu=True, num_workers=1), 0) == 2
