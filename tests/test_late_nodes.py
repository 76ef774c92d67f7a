"""Nodes that join a running experiment (autoscaled workers: cluster.yaml starts with none)
are checked for the run directory before a cycle gives them work; a node that cannot see
it stops the run with the node named, and nothing already committed is lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daal_ray import cycle as cycle_mod
from daal_ray import runtime
from daal_ray.errors import ConfigError

pytestmark = pytest.mark.faults  # pytest -m faults: every fault-injection test


class _Probe:
    """Stands in for the per-node probe: records which node addresses are asked, and
    answers ``sees[address]``."""

    def __init__(self, ray, sees):
        self.ray, self.sees, self.asked, self._node = ray, sees, [], None

    def options(self, scheduling_strategy, **_):
        self._node = scheduling_strategy.node_id
        return self

    def remote(self, path, token):
        assert Path(path).read_text() == token
        self.asked.append(self._node)
        return self.ray.put(self.sees[self._node])


def _node(real, i):
    return {**real, "NodeManagerAddress": f"10.0.0.{i}", "NodeID": f"{i:02d}" * 28}


@pytest.mark.ray
def test_only_nodes_that_joined_since_are_checked_and_a_blind_one_is_named(ray_session, tmp_path, monkeypatch):
    real = next(n for n in ray_session.nodes() if n["Alive"])
    a, b = _node(real, 7), _node(real, 8)
    nodes = [real]
    monkeypatch.setattr(runtime.ray, "nodes", lambda: list(nodes))
    probe = _Probe(ray_session, {real["NodeID"]: True, a["NodeID"]: True, b["NodeID"]: False})
    monkeypatch.setattr(runtime, "_sees", probe)
    checked: set[str] = set()
    assert runtime.check_reachable_everywhere(tmp_path, checked=checked) == 0  # one node: nothing to check
    nodes.append(a)  # a worker joins
    assert runtime.check_reachable_everywhere(tmp_path, checked=checked) == 2
    assert checked == {real["NodeID"], a["NodeID"]}
    probe.asked.clear()
    assert runtime.check_reachable_everywhere(tmp_path, checked=checked) == 0, "nobody new: no probe runs"
    assert probe.asked == []
    nodes.append(b)  # a second worker joins, with node-local storage
    with pytest.raises(ConfigError, match=r"node\(s\) 10\.0\.0\.8 \(08080808\) do not see it"):
        runtime.check_reachable_everywhere(tmp_path, checked=checked)
    assert probe.asked == [b["NodeID"]], "only the node that joined is asked"
    assert b["NodeID"] not in checked
    probe.sees[b["NodeID"]] = True  # its storage fixed: it passes next time, alone
    probe.asked.clear()
    assert runtime.check_reachable_everywhere(tmp_path, checked=checked) == 1 and probe.asked == [b["NodeID"]]


@pytest.mark.ray
def test_the_cycle_loop_checks_new_nodes_before_each_cycle_and_stops_on_a_blind_one(ray_session, tiny_config,
                                                                                    tmp_path, monkeypatch):
    """A node that cannot see the run directory joins after cycle 0 was committed: the
    next cycle stops before training, naming it, and cycle 0's labels are kept."""
    from daal_ray.experiment import run_experiment
    from daal_ray.pool import PoolState
    from daal_ray.rundir import STATE_FILE

    events: list[str] = []
    real_check, real_train = cycle_mod.check_reachable_everywhere, cycle_mod.train_cycle_model

    def check(run_dir, checked):
        events.append("check")
        assert real_check(run_dir, checked=checked) == 0  # the real check runs (one node here)
        if events.count("train") >= 1:  # a blind node has joined after the first cycle
            raise ConfigError("the run directory is not on storage every node reaches: node(s) 10.0.0.9 (09090909)")

    def train(*args, **kwargs):
        events.append("train")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(cycle_mod, "check_reachable_everywhere", check)
    monkeypatch.setattr(cycle_mod, "train_cycle_model", train)
    cfg = tiny_config("random", final_fraction=0.15)
    with pytest.raises(ConfigError, match="10.0.0.9"):
        run_experiment(cfg, tmp_path)
    assert events == ["check", "train", "check"], "checked before each cycle's work, stopped before training"
    state = PoolState.load(tmp_path / cfg.name / STATE_FILE)
    assert state.next_cycle == 2 and state.pending_cycle is None, "cycle 1's batch was committed, nothing pending"
    assert np.count_nonzero(state.labeled_cycle >= 0) == int(round(0.10 * len(state.sample_ids)))
