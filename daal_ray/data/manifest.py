"""Images listed in a manifest: the dataset of a labeling project (``daal-ray init``).

``ROOT/images.parquet`` holds one row per image: ``sample_id`` (int64), ``path`` (absolute),
``split`` (``train`` = the pool people label from, ``test`` = held-out labeled images) and
``label`` (the class index, -1 = none). Its metadata names the classes. Labels of the
``train`` split are *not* read from here: they live in the project's pool state, which
grows as people label; only ``test`` labels (fixed at ``init``) are served as targets.

Images are decoded on access like ``imagefolder`` (RGB, resized to
``DataConfig.image_size`` squared, normalised to [-1, 1]).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from daal_ray.atomic_io import atomic_write_table
from daal_ray.data.base import SPLITS, register_dataset
from daal_ray.data.imagefolder import FileListDataset
from daal_ray.errors import DataError
from daal_ray.settings import DataConfig

MANIFEST_FILE = "images.parquet"
FORMAT = "daal-ray/image-manifest"
_META_KEY = b"daal_ray"


def write_manifest(root: Path, sample_ids: np.ndarray, paths: Sequence[str], splits: Sequence[str],
                   labels: np.ndarray, classes: Sequence[str]) -> Path:
    """Write ``root/images.parquet`` atomically; rows are sorted by ``sample_id``."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    table = pa.table({
        "sample_id": pa.array(ids[order], pa.int64()),
        "path": pa.array([paths[i] for i in order], pa.string()),
        "split": pa.array([splits[i] for i in order], pa.string()),
        "label": pa.array(np.asarray(labels, dtype=np.int64)[order], pa.int64()),
    })
    meta = {"format": FORMAT, "version": 1, "classes": list(classes)}
    path = Path(root) / MANIFEST_FILE
    atomic_write_table(table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()}), path)
    return path


def read_manifest(root: Path) -> tuple[pa.Table, list[str]]:
    """The manifest table of ``root`` and its class names; ``DataError`` naming the file."""
    path = Path(root) / MANIFEST_FILE
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"{path} is missing: is {root} a project made by `daal-ray init`?") from None
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DataError(f"{path} is unreadable ({exc})") from exc
    try:
        meta = json.loads((table.schema.metadata or {})[_META_KEY])
        classes = [str(c) for c in meta["classes"]]
    except (KeyError, ValueError, TypeError):
        raise DataError(f"{path} is not a daal-ray image manifest (no class list in its metadata)") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} is not a daal-ray image manifest (format {meta.get('format')!r})")
    missing = {"sample_id", "path", "split", "label"} - set(table.column_names)
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
    return table, classes


@register_dataset("manifest")
class ManifestDataset(FileListDataset):
    """Images listed in ROOT/images.parquet (a labeling project made by `daal-ray init`).

    ``targets`` serves the labels fixed at ``init``: the test split's; -1 for pool images,
    whose labels are in the project's pool state.
    """

    name = "manifest"
    in_channels = 3
    default_model = "small_cnn"

    def __init__(self, config: DataConfig) -> None:
        if not config.root:
            raise DataError("dataset manifest needs --data-root (a project folder made by `daal-ray init`)")
        self.root = Path(config.root).expanduser()
        self.size = config.image_size
        table, self.classes = read_manifest(self.root)
        self.num_classes = len(self.classes)
        ids = table["sample_id"].to_numpy().astype(np.int64)
        paths = table["path"].to_pylist()
        split = np.asarray(table["split"].to_pylist(), dtype=object)
        labels = table["label"].to_numpy().astype(np.int64)
        self._files: dict[str, tuple[np.ndarray, list[Path], np.ndarray]] = {}
        for name in SPLITS:
            rows = np.flatnonzero(split == name)
            order = rows[np.argsort(ids[rows], kind="stable")]
            self._files[name] = (ids[order], [Path(paths[i]) for i in order], labels[order])
        if self._files["train"][0].size == 0:
            raise DataError(f"{self.root / MANIFEST_FILE} lists no pool (train) images")
