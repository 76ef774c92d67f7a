"""A user's own images: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``.

Classes are the sorted folder names under ``train/``; ``test/`` may hold a subset of them.
Images are decoded on access (RGB, resized to ``DataConfig.image_size`` squared,
normalised to [-1, 1]), so folders larger than memory work. ``sample_id`` is a 63-bit hash
of the file's path relative to ``ROOT``: it stays the same when files are added or removed.
Every file's header is checked when the dataset is opened, and an unreadable image stops
with its path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from daal_ray.data.base import PoolDataset, Split, id_rows, register_dataset
from daal_ray.errors import DataError
from daal_ray.settings import DataConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def path_sample_id(relative_path: str) -> int:
    """Stable int64 id of a file: the first 63 bits of BLAKE2b of its relative POSIX path."""
    digest = hashlib.blake2b(relative_path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def load_image(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` to uint8 ``[3, size, size]``; ``DataError`` naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {exc}") from exc
    return arr.transpose(2, 0, 1)


def verify_image(path: Path) -> None:
    """Check that ``path`` is a readable image (its header and structure, without decoding
    the pixels); ``DataError`` naming the file if not."""
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {exc}") from exc


class FileListDataset(PoolDataset):
    """Images decoded on access from a file list per split: subclasses fill ``self._files``
    (``split -> (ids sorted int64, paths, labels)``) and set ``self.size``.

    Images are RGB, resized to ``size`` squared and normalised to [-1, 1].
    """

    _files: dict[str, tuple[np.ndarray, list[Path], np.ndarray]]
    size: int

    def _rows(self, split: str, ids: np.ndarray) -> np.ndarray:
        self._check_split(split)
        return id_rows(self._files[split][0], ids, self.name, split)

    def sample_ids(self, split: Split) -> np.ndarray:
        self._check_split(split)
        return self._files[split][0].copy()

    def paths(self, split: Split, ids: np.ndarray) -> list[Path]:
        """The image files of ``ids``, in their order."""
        files = self._files[split][1]
        return [files[i] for i in self._rows(split, ids)]

    def images(self, split: Split, ids: np.ndarray) -> torch.Tensor:
        arr = np.stack([load_image(p, self.size) for p in self.paths(split, ids)]) if len(ids) else \
            np.zeros((0, 3, self.size, self.size), np.uint8)
        return torch.from_numpy(arr).float().div_(127.5).sub_(1.0)

    def targets(self, split: Split, ids: np.ndarray) -> np.ndarray:
        return self._files[split][2][self._rows(split, ids)].copy()


@register_dataset("imagefolder")
class ImageFolderDataset(FileListDataset):
    """Your own images in a folder tree: ROOT/train/<class>/*, ROOT/test/<class>/*."""

    name = "imagefolder"
    in_channels = 3
    default_model = "small_cnn"

    def __init__(self, config: DataConfig) -> None:
        if not config.root:
            raise DataError("dataset imagefolder needs --data-root (a folder with train/<class>/ and test/<class>/)")
        self.root = Path(config.root).expanduser()
        self.size = config.image_size
        if not self.root.is_dir():
            raise DataError(f"data root {self.root} does not exist or is not a folder")
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            raise DataError(f"{train_dir} is missing: imagefolder expects ROOT/train/<class>/ and ROOT/test/<class>/")
        self.classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        if not self.classes:
            raise DataError(f"{train_dir} holds no class folders")
        self.num_classes = len(self.classes)
        self._files: dict[str, tuple[np.ndarray, list[Path], np.ndarray]] = {}
        for split in ("train", "test"):
            self._files[split] = self._scan(split)

    def _scan(self, split: str) -> tuple[np.ndarray, list[Path], np.ndarray]:
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir} is missing: imagefolder expects ROOT/{split}/<class>/")
        index = {c: i for i, c in enumerate(self.classes)}
        entries: list[tuple[int, Path, int]] = []
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if class_dir.name not in index:
                raise DataError(f"class folder {class_dir} has no counterpart under {self.root / 'train'}")
            for f in sorted(class_dir.rglob("*")):
                if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                verify_image(f)
                rel = f.relative_to(self.root).as_posix()
                entries.append((path_sample_id(rel), f, index[class_dir.name]))
        if not entries:
            raise DataError(f"{split_dir} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        entries.sort(key=lambda e: e[0])
        ids = np.array([e[0] for e in entries], dtype=np.int64)
        if np.any(ids[1:] == ids[:-1]):
            raise DataError(f"two files under {split_dir} hash to one sample id; rename one of them")
        return ids, [e[1] for e in entries], np.array([e[2] for e in entries], dtype=np.int64)
