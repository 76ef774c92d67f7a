"""Tiny labeling projects for the labeling tests: 12x12 PNGs of three colours (red, green,
blue) with noise, each image's true class in its file name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from daal_ray.labeling import init_project, select_next_batch
from daal_ray.pool import PoolState

CLASSES = ("red", "green", "blue")
RGB = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
FAST = {"train": {"model": "small_cnn", "epochs": 4, "batch_size": 16},
        "scale": {"num_workers": 0, "inference_compute": "tasks"}, "image_size": 12}


def _png(path: Path, colour: str, rng: np.random.Generator) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.clip(np.array(RGB[colour])[None, None] + rng.normal(0, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _images(root: Path, labeled: int = 4, unlabeled: int = 8, seed: int = 0) -> Path:
    """``labeled`` images per class in class folders, ``unlabeled`` per class at the top level."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        for i in range(labeled):
            _png(root / c / f"{c}_s{i}.png", c, rng)
        for i in range(unlabeled):
            _png(root / f"{c}_{i}.png", c, rng)
    return root


def _truth(path: str) -> str:
    return Path(path).name.split("_")[0]


def _state(project: Path) -> PoolState:
    return PoolState.load(project / "pool_state.parquet")


def make_cold_project(tmp_path: Path, budget: int = 6):
    """A project of 24 unlabeled images (a flat folder) with a random first batch of ``budget`` pending."""
    rng = np.random.default_rng(3)
    for c in CLASSES:
        for i in range(8):
            _png(tmp_path / "flat" / f"{c}_{i}.png", c, rng)
    project = tmp_path / "proj"
    init_project(project, classes=CLASSES, images=tmp_path / "flat", settings={**FAST, "budget": budget})
    out = select_next_batch(project)
    assert out.cycle == 0 and out.sample_ids.size == budget
    return project, out
