"""Helpers shared by the tests of pools kept as parquet shards (scoring, sampling, shards,
the ``score`` verb): a synthetic pool of precomputed features and its parquet shards."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def feature_pool(n: int, dim: int, n_labeled: int, seed: int = 0, distinct_probs: int = 0) -> dict[str, np.ndarray]:
    """A pool of ``n`` rows of ``dim``-d features and 5-class probs, ``n_labeled`` of them labeled."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 3 + 11)  # ids are not positions, rows not in id order
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if distinct_probs:
        table = rng.dirichlet(np.ones(5), size=distinct_probs).astype(np.float32)
        probs = table[rng.integers(0, distinct_probs, n)]  # few distinct rows: heavy ties in entropy
    else:
        probs = rng.dirichlet(np.ones(5), size=n).astype(np.float32)
    labeled = np.zeros(n, bool)
    labeled[rng.choice(n, n_labeled, replace=False)] = True
    return {"sample_id": ids, "labeled": labeled, "features": x, "probs": probs}


def write_shards(pool: dict[str, np.ndarray], folder, n_shards: int, *, label: bool = False,
                 probs: bool = True) -> list[str]:
    """The pool as ``n_shards`` parquet files ``part-NNN.parquet`` under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rows in enumerate(np.array_split(np.arange(pool["sample_id"].size), n_shards)):
        cols = {"sample_id": pa.array(pool["sample_id"][rows]),
                "features": pa.FixedSizeListArray.from_arrays(pa.array(pool["features"][rows].reshape(-1)),
                                                              pool["features"].shape[1])}
        if probs:
            cols["probs"] = pa.array(list(pool["probs"][rows]), type=pa.list_(pa.float32()))
        if label:
            cols["label"] = pa.array(np.where(pool["labeled"][rows], 1, 0), mask=~pool["labeled"][rows])
        path = folder / f"part-{i:03d}.parquet"
        pq.write_table(pa.table(cols), path)
        paths.append(str(path))
    return paths
