"""Losing a node: faults on a three-node Ray cluster (a head without task resources, two
4-CPU worker nodes), each checked against an uninterrupted run with the same seed.

The cluster is started once, in a process of its own (this one is connected to the
suite's single-node Ray), by tests/multinode_scenarios.py, which runs every scenario on it
and writes what it saw; each test here checks one scenario. A node is removed the way a
preempted instance goes (its raylet and every process on it killed), then replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults  # pytest -m faults: every fault-injection test

HERE = Path(__file__).resolve().parent


def start_scenarios(out: Path, rc_file: bool = False) -> subprocess.Popen:
    """Start every scenario on a fresh three-node cluster, in a process of its own; its
    output goes to ``out/scenarios.log``. The suite starts it when the session begins
    (tests/conftest.py), so the cluster's minutes overlap the other tests, which mostly
    wait on processes too. With ``rc_file`` its exit status is written to ``out/rc`` when
    it ends (read by xdist workers that did not start it, so cannot wait on it)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])})
    log = open(out / "scenarios.log", "wb")
    cmd = [sys.executable, str(HERE / "multinode_scenarios.py"), str(out)]
    if rc_file:
        cmd = ["sh", "-c", '"$@"; echo $? > rc.tmp && mv rc.tmp rc', "scenarios", *cmd]
    return subprocess.Popen(cmd, env=env, cwd=out, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_shared_scenarios(out: Path, timeout: float = 900) -> int:
    """The exit status of scenarios another xdist worker started in ``out``, once written."""
    deadline = time.time() + timeout
    while not (out / "rc").exists():
        if time.time() > deadline:
            with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
                os.killpg(int((out / "pid").read_text()), 9)
            raise TimeoutError(f"the multi-node scenarios did not finish in {timeout:g} s")
        time.sleep(1)
    return int((out / "rc").read_text())


@pytest.fixture(scope="module")
def scenarios(request, tmp_path_factory):
    from conftest import shared_scenarios_dir

    started = getattr(request.config, "multinode_scenarios", None)
    shared = shared_scenarios_dir()
    if started is None and os.environ.get("PYTEST_XDIST_WORKER") and shared.exists():
        out = shared
        rc = wait_for_shared_scenarios(out)
    else:
        if started is None:  # this module alone: start them now
            out = tmp_path_factory.mktemp("multinode")
            started = (out, start_scenarios(out))
        out, proc = started
        try:
            rc = proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            raise
    assert rc == 0, (out / "scenarios.log").read_text(errors="replace")[-4000:]

    def result(name: str) -> dict:
        found = json.loads((out / f"{name}.json").read_text())
        assert "error" not in found, found["error"]
        return found

    return result


def _same_outcome(clean: dict, faulty: dict) -> None:
    assert faulty["pending_cycle"] is None
    assert faulty["labeled_cycle"] == clean["labeled_cycle"], "the labeled set (and each id's cycle) of the clean run"
    assert faulty["label"] == clean["label"]
    assert faulty["num_added"] == clean["num_added"], "no budget spent twice"
    assert faulty["result_cycles"] == clean["result_cycles"] == [0, 1], "every cycle recorded once"


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_the_run_directory_check_reaches_every_node(scenarios):
    found = scenarios("storage_check")
    assert found["checked_nodes"] == found["alive_nodes"] == 3


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_the_aldriver_node_lost_between_propose_and_commit_and_while_training(scenarios):
    found = scenarios("aldriver_node")
    removed = found["faulty"]["removed"]
    assert [r["when"] for r in removed] == ["between propose and commit", "while cycle 1 trains"]
    assert removed[0]["pending_cycle"] == 1, "the first loss came with cycle 1's batch proposed, not committed"
    for r in removed:  # the actor came back on another live node, from the state file
        assert r["restarted_on"] != r["node"] and r["restarted_on"] in r["worker_nodes"]
    _same_outcome(found["clean"], found["faulty"])


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_a_train_worker_node_lost_mid_training_restarts_the_group_from_the_checkpoints(scenarios):
    found = scenarios("train_worker_node")
    faulty = found["faulty"]
    assert faulty["removed"], "a node hosting a Train worker was removed"
    assert faulty["restarts"] == 2, "Ray Train started the worker group a second time, on the nodes left"
    assert not faulty["checkpoint_0_retrained"], "cycle 0's model was reused from its checkpoint"
    _same_outcome(found["clean"], faulty)


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_a_scoring_node_lost_mid_pass_scores_every_unlabeled_id_exactly_once(scenarios):
    found = scenarios("scoring_node")
    assert found["victim_batches"] >= 1, "the removed node was scoring when it went"
    # A worker process of the removed node can start one more batch before it sees its raylet
    # gone (its result is lost with it); the pass itself must go on on another node.
    assert set(found["nodes_after"]) - {found["removed"]}, "the pass went on elsewhere"
    # K = every unlabeled id: the merged top-K holds each exactly once (the merge refuses
    # an id reaching it twice), with the in-process predictor's scores, in its order.
    assert len(found["got_ids"]) == len(set(found["got_ids"])) == found["num_unlabeled"]
    assert found["got_ids"] == found["want_ids"]
    assert found["got_scores"] == pytest.approx(found["want_scores"], rel=1e-5)
    assert found["rows_started"] >= found["num_unlabeled"]


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_trial_whose_node_is_lost_is_retried_and_finished_trials_are_not_redone(scenarios):
    found = scenarios("sweep_trial_node")
    faulty = found["faulty"]
    assert faulty["removed"] and faulty["trial_actors_alive"] == 1, "the node of the one running trial was removed"
    assert found["second_restarts"] >= 2, "the lost trial ran again (a second worker group)"
    _same_outcome(found["clean"], faulty)
    # The trial that had finished: neither rerun nor rewritten.
    assert found["first_restarts"] == 1 and found["first_cycles"] == [0, 1]
    assert found["first_results_mtime_after"] == faulty["first_results_mtime"]
