"""Parquet feature shards (daal_ray.shards), without Ray: labeled flags by binary search,
and bad batches and bad shard schemas stopped with a DataError naming the shard."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_helpers import feature_pool, write_shards

from daal_ray.errors import DataError
from daal_ray.shards import inspect_feature_shards, labeled_flags, prepare_feature_batch


def test_labeled_flags_by_binary_search():
    assert labeled_flags(np.array([5, 1, 9, 4]), np.array([1, 4, 7])).tolist() == [False, True, False, True]
    assert labeled_flags(np.array([5, 1]), None).tolist() == [False, False]
    assert labeled_flags(np.array([5, 1]), np.zeros(0, np.int64)).tolist() == [False, False]


def _batch(pool: dict[str, np.ndarray], rows: slice, shard: str = "s/b.parquet", **override) -> pa.Table:
    """One batch as Ray Data hands it to the per-batch check: shard columns plus ``path``."""
    n = pool["sample_id"][rows].size
    cols = {"sample_id": pa.array(pool["sample_id"][rows]),
            "features": pa.array(list(pool["features"][rows]), type=pa.list_(pa.float32())),
            "path": pa.array([shard] * n)}
    cols.update(override)
    return pa.table(cols)


def test_bad_batches_stop_with_an_error_naming_the_shard():
    pool = feature_pool(100, 4, 0, seed=5)
    check = dict(dim=4, labeled_ids=None, use_label=False, probs=False)
    out = prepare_feature_batch(_batch(pool, slice(0, 50)), **check)
    np.testing.assert_array_equal(out["features"], pool["features"][:50])
    ragged = [list(v) for v in pool["features"][:50]]
    ragged[7] = ragged[7][:2]
    with pytest.raises(DataError, match=rf"shard s/b\.parquet: features has ragged rows \(lengths \[2\] where 4 was "
                                        rf"expected\), e.g. sample ids \[{pool['sample_id'][7]}\]"):
        prepare_feature_batch(_batch(pool, slice(0, 50), features=pa.array(ragged, type=pa.list_(pa.float32()))),
                              **check)
    with pytest.raises(DataError, match=r"features is null in 1 row"):
        prepare_feature_batch(_batch(pool, slice(0, 3), features=pa.array([[1.0] * 4, None, [2.0] * 4],
                                                                           type=pa.list_(pa.float32()))), **check)
    dup = pool["sample_id"][:50].copy()
    dup[10] = dup[11]
    with pytest.raises(DataError, match=rf"shard s/b\.parquet: duplicate sample ids \[{dup[11]}\]"):
        prepare_feature_batch(_batch(pool, slice(0, 50), sample_id=pa.array(dup)), **check)
    with pytest.raises(DataError, match=r"sample_id is null in 1 row"):
        prepare_feature_batch(_batch(pool, slice(0, 2), sample_id=pa.array([1, None], type=pa.int64())), **check)
    with pytest.raises(DataError, match=r"lengths \[4\] where 8 was expected"):  # not the shards' width
        prepare_feature_batch(_batch(pool, slice(0, 5)), **{**check, "dim": 8})


def test_bad_shard_schemas_are_named(tmp_path):
    pool = feature_pool(100, 4, 0, seed=5)
    good = write_shards(pool, tmp_path / "good", 2, probs=False)
    assert inspect_feature_shards(good).dim == 4 and inspect_feature_shards(good).num_rows == 100
    pq.write_table(pa.table({"sample_id": pool["sample_id"][:5]}), tmp_path / "nofeat.parquet")
    with pytest.raises(DataError, match=r"nofeat\.parquet lacks column\(s\) features"):
        inspect_feature_shards(good + [str(tmp_path / "nofeat.parquet")])
    pq.write_table(pa.table({"sample_id": pool["sample_id"][:5].astype(float), "features": pa.array(
        list(pool["features"][:5]), type=pa.list_(pa.float32()))}), tmp_path / "floatid.parquet")
    with pytest.raises(DataError, match=r"floatid\.parquet: sample_id must be an integer column"):
        inspect_feature_shards([str(tmp_path / "floatid.parquet")])
    wide = write_shards(feature_pool(10, 6, 0), tmp_path / "wide", 1, probs=False)
    with pytest.raises(DataError, match=r"part-000\.parquet has 6-d features, the shards before it 4-d"):
        inspect_feature_shards(good + wide)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet is not a readable parquet file"):
        inspect_feature_shards([str(tmp_path / "junk.parquet")])
