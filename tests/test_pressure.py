"""Pressure: a pool whose inference output is larger than the object store, and a slow
worker. The cycle loop materialises the pool's features for a strategy that reads them
twice (``multipass``: top beta x K, then the candidates' rows); with a store smaller than
them Ray spills them to disk, and the selection must be the one the same pool gives in
memory. A worker that is slow on some blocks changes when its blocks arrive, never which
samples are selected (the merge is exact and ordered by score, then ``sample_id``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.faults  # pytest -m faults: every fault-injection test

SCRIPT = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    import ray, ray.data
    from daal_ray.acquisition import FitContext, build_strategy
    from daal_ray.config import AcquisitionConfig
    from daal_ray.scoring import select_topk
    from daal_ray.runtime import quiet_ray_data

    N, D, C, K = int(sys.argv[1]), 128, 10, 500
    _r = np.random.default_rng(0)
    W, B, W2 = _r.uniform(0.1, 3.0, D), _r.uniform(0, 6.3, D), _r.uniform(0.1, 3.0, C)

    def rows(batch):
        """The pool's inference output for a block of ids, a function of the ids alone."""
        ids = np.asarray(batch["id"], dtype=np.int64)
        t = (ids.astype(np.float64) + 1.0)[:, None]
        x = np.sin(t * W + B).astype(np.float32)
        z = 3.0 * np.cos(t * W2)
        p = np.exp(z - z.max(1, keepdims=True))
        return {"sample_id": ids * 7 + 3, "labeled": ids % 10 == 0, "features": x,
                "probs": (p / p.sum(1, keepdims=True)).astype(np.float32)}

    class Slow:
        """The strategy's scorer (all select_topk reads of it), stalling on a third of the blocks."""
        def __init__(self, inner):
            self.inner = inner
        def score(self, batch):
            if int(batch["sample_id"][0]) % 3 == 0:
                time.sleep(0.05)
            return self.inner.score(batch)

    # A new instance of its own (address="local"), whatever else runs on the machine.
    ray.init(address="local", num_cpus=4, object_store_memory=80 * 1024 * 1024, include_dashboard=False,
             logging_level="ERROR")
    quiet_ray_data()
    strategy = build_strategy(AcquisitionConfig(strategy="entropy_diverse"), seed=1, cycle=2)
    pool = ray.data.range(N, override_num_blocks=40).map_batches(rows, batch_format="numpy").materialize()
    stored = pool.size_bytes()
    summary = ray._private.internal_api.memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    n_lab = N // 10
    ctx = FitContext(features=pool, num_labeled=n_lab, cycle=2, pool_ids=np.arange(N) * 7 + 3,
                     scorer=lambda f, s, k: select_topk(f, s, k))
    picked, _, _ = strategy.select(ctx, K)
    slow_ctx = FitContext(features=pool, num_labeled=n_lab, cycle=2, pool_ids=np.arange(N) * 7 + 3,
                          scorer=lambda f, s, k: select_topk(f, Slow(s), k))
    slow, _, _ = strategy.select(slow_ctx, K)
    ray.shutdown()
    whole = rows({"id": np.arange(N)})  # the same pool, in this process's memory
    ctx = FitContext(features=whole, num_labeled=n_lab, cycle=2, pool_ids=np.arange(N) * 7 + 3)
    reference, _, _ = strategy.select(ctx, K)
    print(json.dumps({"stored": stored, "summary": summary, "picked": picked.tolist(), "slow": slow.tolist(),
                      "reference": reference.tolist()}))
''')


@pytest.mark.cluster
@pytest.mark.ray
@pytest.mark.slow
def test_a_pool_larger_than_the_object_store_spills_and_selects_the_same_even_with_a_slow_worker():
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    r = subprocess.run([sys.executable, "-c", SCRIPT, "300000"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["stored"] > 1.5 * 80 * 1024 * 1024, "the pool's features are larger than the store"
    spilled = [line for line in out["summary"].splitlines() if "Spilled" in line]
    assert spilled and not spilled[0].split()[1].startswith("0"), out["summary"]
    assert len(out["reference"]) == 500 and len(set(out["reference"])) == 500
    assert out["picked"] == out["reference"], "spilled to disk, the same selection as in memory"
    assert out["slow"] == out["reference"], "a slow worker changes the time, not the selection"
