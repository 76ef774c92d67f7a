"""Cityscapes semantic segmentation (19 classes) from the official on-disk layout.

    ROOT/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
    ROOT/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png

The active-learning pool (split ``train``) is the official ``train`` split (2,975 images);
the protocol's ``test`` split is the official ``val`` split (500 images), because the
official ``test`` split has no public labels (its ``gtFine`` masks are placeholders), so
``leftImg8bit/test`` is never read. The masks' ``labelIds`` are mapped to the 19 training
ids of the official label table through a 256-entry lookup table; every other id (void,
"unlabeled", "ego vehicle", "license plate" stored as 255, ...) becomes 255 and is ignored
by the loss and the metric.

Resolution: images are resized to ``DataConfig.image_size`` pixels high and twice as wide
(Cityscapes' 1:2 aspect; the native 1024 x 2048 is ``image_size = 1024``), images with
bilinear and masks with nearest-neighbour interpolation, so a resized mask holds only
labels that were in the original. Images are normalised with the per-channel mean and
standard deviation of the Cityscapes training images.

Files are decoded on access, so pools larger than memory work. Opening the dataset reads
only the PNG headers: every image must have its mask, of the same size, and the mask must
be single-channel (the ``_gtFine_color.png`` files are refused). A file that is unreadable
(when opened or later when decoded) stops with its path. ``sample_id`` is the 63-bit hash
of the image's path relative to ``ROOT`` (:func:`daal_ray.data.imagefolder.path_sample_id`).

:func:`write_fixture` writes a tiny synthetic dataset in this layout (tests and
``jobs/cityscapes.py --smoke-test``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset as TorchDataset

from daal_ray.data.base import PoolDataset, Split, id_rows, register_dataset
from daal_ray.data.imagefolder import path_sample_id
from daal_ray.errors import DataError
from daal_ray.settings import DataConfig, TrainConfig

__all__ = ["CLASS_NAMES", "CityscapesDataset", "LABEL_TO_TRAIN_ID", "IGNORE_INDEX", "OFFICIAL_SPLIT", "label_lut",
           "to_train_ids", "write_fixture"]

IGNORE_INDEX = 255
# The official label table (cityscapesscripts' labels.py): labelId -> trainId for the 19
# evaluated classes; every other labelId is void (255).
LABEL_TO_TRAIN_ID: dict[int, int] = {
    7: 0,    # road
    8: 1,    # sidewalk
    11: 2,   # building
    12: 3,   # wall
    13: 4,   # fence
    17: 5,   # pole
    19: 6,   # traffic light
    20: 7,   # traffic sign
    21: 8,   # vegetation
    22: 9,   # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
CLASS_NAMES: tuple[str, ...] = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                                "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                                "bus", "train", "motorcycle", "bicycle")
# The protocol's splits and the official folders they read.
OFFICIAL_SPLIT: dict[str, str] = {"train": "train", "test": "val"}
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
# Per-channel statistics of the Cityscapes training images (RGB, in [0, 1]; approximate).
MEAN = (0.2901, 0.3281, 0.2870)
STD = (0.1830, 0.1866, 0.1845)
_MASK_MODES = {"L", "P", "I", "I;16"}


def label_lut() -> np.ndarray:
    """The 256-entry uint8 lookup table labelId -> trainId (255 = void)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


_LUT = label_lut()


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map an array of labelIds (0..255) to train ids (0..18, 255 = void), as uint8."""
    return _LUT[np.asarray(label_ids, dtype=np.uint8)]


def _open_error(path: Path, exc: Exception) -> DataError:
    return DataError(f"unreadable Cityscapes file {path}: {exc}")


def _read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode an RGB image to uint8 ``[3, H, W]`` at ``size = (W, H)`` (bilinear)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != size:
                im = im.resize(size, Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise _open_error(path, exc) from exc
    return arr.transpose(2, 0, 1)


def _read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode a labelIds mask to train ids, uint8 ``[H, W]`` at ``size = (W, H)`` (nearest)."""
    try:
        with Image.open(path) as im:
            if im.mode not in _MASK_MODES:
                raise DataError(f"label file {path} has mode {im.mode}; expected a single-channel labelIds PNG "
                                f"(*{LABEL_SUFFIX}, not the color one)")
            if im.size != size:
                im = im.resize(size, Image.NEAREST)
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise _open_error(path, exc) from exc
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"label file {path} holds values outside 0..255; expected Cityscapes labelIds")
        arr = arr.astype(np.uint8)
    return _LUT[arr]


@register_dataset("cityscapes")
class CityscapesDataset(PoolDataset):
    """Cityscapes fine annotations, 19 classes: pool = official train, test = official val."""

    name = "cityscapes"
    task = "segmentation"
    num_classes = 19
    in_channels = 3
    default_model = "drn_a_18"

    def __init__(self, config: DataConfig) -> None:
        if not config.root:
            raise DataError("dataset cityscapes needs --data-root (the folder that holds leftImg8bit/ and gtFine/)")
        self.root = Path(config.root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"data root {self.root} does not exist or is not a folder")
        self.height = config.image_size
        self.width = 2 * config.image_size
        mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
        self._norm = (mean * 255.0, std * 255.0)
        self._files: dict[str, tuple[np.ndarray, list[Path], list[Path]]] = {
            split: self._scan(split) for split in ("train", "test")}

    # ------------------------------------------------------------------ index
    def _scan(self, split: str) -> tuple[np.ndarray, list[Path], list[Path]]:
        official = OFFICIAL_SPLIT[split]
        image_dir = self.root / "leftImg8bit" / official
        label_dir = self.root / "gtFine" / official
        if not image_dir.is_dir():
            raise DataError(f"{image_dir} is missing: cityscapes expects ROOT/leftImg8bit/{official}/<city>/ "
                            f"(the protocol's {split} split is the official {official} split)")
        images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise DataError(f"{image_dir} holds no <city>/*{IMAGE_SUFFIX} images; the {split} split is empty")
        entries: list[tuple[int, Path, Path]] = []
        for image in images:
            stem = image.name[: -len(IMAGE_SUFFIX)]
            label = label_dir / image.parent.name / f"{stem}{LABEL_SUFFIX}"
            if not label.is_file():
                raise DataError(f"label file {label} is missing (the mask of {image})")
            sizes = []
            for path in (image, label):
                try:
                    with Image.open(path) as im:  # header only; pixels are decoded on access
                        sizes.append(im.size)
                        if path is label and im.mode not in _MASK_MODES:
                            raise DataError(f"label file {label} has mode {im.mode}; expected a single-channel "
                                            f"labelIds PNG (*{LABEL_SUFFIX}, not the color one)")
                except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
                    raise _open_error(path, exc) from exc
            if sizes[0] != sizes[1]:
                raise DataError(f"image {image} is {sizes[0][0]}x{sizes[0][1]} but its label file {label} is "
                                f"{sizes[1][0]}x{sizes[1][1]}; they must be the same size")
            entries.append((path_sample_id(image.relative_to(self.root).as_posix()), image, label))
        entries.sort(key=lambda e: e[0])
        ids = np.array([e[0] for e in entries], dtype=np.int64)
        if np.any(ids[1:] == ids[:-1]):
            raise DataError(f"two images under {image_dir} hash to one sample id; rename one of them")
        return ids, [e[1] for e in entries], [e[2] for e in entries]

    def _rows(self, split: str, ids: np.ndarray) -> np.ndarray:
        self._check_split(split)
        return id_rows(self._files[split][0], ids, "cityscapes", split)

    # ------------------------------------------------------------------ PoolDataset
    def sample_ids(self, split: Split) -> np.ndarray:
        self._check_split(split)
        return self._files[split][0].copy()

    def paths(self, split: Split, ids: np.ndarray) -> list[tuple[Path, Path]]:
        """``(image, label)`` file pairs of ``ids``."""
        rows = self._rows(split, ids)
        _, images, labels = self._files[split]
        return [(images[i], labels[i]) for i in rows]

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` that images and masks are resized to."""
        return self.width, self.height

    def _normalise(self, arr: np.ndarray) -> torch.Tensor:
        mean, std = self._norm
        return (torch.from_numpy(arr).float() - mean) / std

    def images(self, split: Split, ids: np.ndarray) -> torch.Tensor:
        pairs = self.paths(split, ids)
        if not pairs:
            return torch.zeros(0, 3, self.height, self.width)
        return self._normalise(np.stack([_read_image(image, self.size) for image, _ in pairs]))

    def targets(self, split: Split, ids: np.ndarray) -> np.ndarray:
        """Train-id masks of ``ids``, int64 ``[n, H, W]`` (255 = void)."""
        pairs = self.paths(split, ids)
        if not pairs:
            return np.zeros((0, self.height, self.width), dtype=np.int64)
        return np.stack([_read_mask(label, self.size) for _, label in pairs]).astype(np.int64)

    def torch_dataset(self, split: Split, ids: np.ndarray, targets: Optional[np.ndarray] = None) -> TorchDataset:
        """Image and mask pairs decoded per batch (the masks are not held for all ``ids`` at once)."""
        if targets is not None:
            return super().torch_dataset(split, ids, targets)
        return _PairDataset(self, split, np.asarray(ids, dtype=np.int64))

    @classmethod
    def default_train(cls) -> TrainConfig:
        # The paper: a dilated residual network, Adam lr 5e-4, 50 epochs, no augmentation.
        # It does not state the batch size; 8 images fit one GPU at 512 x 1024.
        return TrainConfig(model=cls.default_model, epochs=50, batch_size=8, optimizer="adam", lr=5e-4,
                           weight_decay=0.0, schedule="constant")


class _PairDataset(TorchDataset):
    """``(image, mask)`` of ``ids``, decoded on access; ``__getitems__`` decodes a batch."""

    def __init__(self, source: CityscapesDataset, split: Split, ids: np.ndarray) -> None:
        self.source, self.split, self.ids = source, split, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, idx: list[int]):
        ids = self.ids[np.asarray(idx, dtype=np.int64)]
        x = self.source.images(self.split, ids)
        y = torch.from_numpy(self.source.targets(self.split, ids))
        return [(x[j], y[j]) for j in range(len(ids))]


# ====================================================================== fixture
# labelIds the fixture paints, each with a colour the model can learn it from: the image
# is the colour of each pixel's class plus noise. Void ids (0 unlabeled, 1 ego vehicle,
# 4 static) appear too, in their own colours, and must map to 255.
_FIXTURE_COLOURS: dict[int, tuple[int, int, int]] = {
    23: (70, 130, 180),   # sky
    11: (70, 70, 70),     # building
    21: (107, 142, 35),   # vegetation
    7: (128, 64, 128),    # road
    8: (244, 35, 232),    # sidewalk
    26: (0, 0, 142),      # car
    24: (220, 20, 60),    # person
    0: (0, 0, 0),         # unlabeled (void)
    1: (20, 20, 20),      # ego vehicle (void)
    4: (111, 74, 0),      # static (void)
}


def _fixture_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A street-like labelIds mask: sky, buildings or vegetation, road, a car, a person, void."""
    m = np.empty((height, width), dtype=np.uint8)
    horizon = int(rng.integers(height // 4, height // 2))
    road = int(rng.integers(horizon + 1, max(horizon + 2, 3 * height // 4)))
    m[:horizon] = 23
    split_col = int(rng.integers(width // 4, 3 * width // 4))
    m[horizon:road, :split_col] = 11
    m[horizon:road, split_col:] = 21 if rng.random() < 0.5 else 11
    m[road:] = 7
    m[road:, : max(1, width // 8)] = 8
    for label, (h_frac, w_frac) in ((26, (0.25, 0.2)), (24, (0.3, 0.06))):
        if rng.random() < 0.8:
            h, w = max(1, int(h_frac * height)), max(1, int(w_frac * width))
            top = int(rng.integers(max(1, horizon - h // 2), max(2, height - h)))
            left = int(rng.integers(0, max(1, width - w)))
            m[top:top + h, left:left + w] = label
    m[-max(1, height // 16):] = 1      # ego vehicle along the bottom
    m[0, : max(1, width // 16)] = 0    # an unlabeled corner
    if rng.random() < 0.5:
        m[horizon: horizon + max(1, height // 16), split_col: split_col + max(1, width // 32)] = 4
    return m


def write_fixture(root: str | Path, *, cities: Sequence[str] = ("aachen", "bochum"), per_city: int = 8,
                  val_per_city: int = 3, height: int = 32, width: int = 64, seed: int = 0) -> Path:
    """Write a tiny synthetic Cityscapes in the official layout under ``root``; return ``root``.

    ``per_city`` train and ``val_per_city`` val images of ``width x height`` per city, named
    like the official files (``<city>_<seq>_000019_leftImg8bit.png``), each with its
    ``_gtFine_labelIds.png`` mask. Masks use real labelIds, void ids included; images are
    the colour of each pixel's label plus noise, so a model can learn the mapping. The
    same arguments write the same bytes.
    """
    if per_city < 1 or val_per_city < 1 or height < 4 or width < 4:
        raise ValueError("write_fixture needs per_city, val_per_city >= 1 and a size of at least 4 x 4")
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = np.zeros((256, 3), dtype=np.int16)
    for label, colour in _FIXTURE_COLOURS.items():
        colours[label] = colour
    for official, count in (("train", per_city), ("val", val_per_city)):
        for city in cities:
            image_dir = root / "leftImg8bit" / official / city
            label_dir = root / "gtFine" / official / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                stem = f"{city}_{i:06d}_000019"
                mask = _fixture_mask(rng, height, width)
                noise = rng.integers(-25, 26, size=(height, width, 3))
                image = np.clip(colours[mask] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(image, "RGB").save(image_dir / f"{stem}{IMAGE_SUFFIX}")
                Image.fromarray(mask, "L").save(label_dir / f"{stem}{LABEL_SUFFIX}")
    return root
