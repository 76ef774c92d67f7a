"""CIFAR-10 and CIFAR-100 from the official on-disk layout ("python version").

``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch}`` and
``ROOT/cifar-100-python/{train,test}``. With ``DataConfig.download`` the archive is
fetched through torchvision where the machine has internet. The batches are pickles; they
are read with an unpickler that admits only NumPy arrays and plain containers, so a
tampered file cannot run code. ``sample_id`` is the row in the official order.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from daal_ray.data.base import InMemoryDataset, register_dataset
from daal_ray.errors import DataError
from daal_ray.settings import DataConfig, TrainConfig

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_batch(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"CIFAR file {path} is missing")
    try:
        with open(path, "rb") as fh:
            obj = _SafeUnpickler(io.BytesIO(fh.read()), encoding="latin1").load()
    except Exception as exc:
        raise DataError(f"CIFAR file {path} is unreadable or not an official CIFAR batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR file {path} does not hold a batch dictionary")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


class _Cifar(InMemoryDataset):
    folder = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    label_key = "labels"
    tv_class = ""
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    default_model = "wrn28_2"

    def __init__(self, config: DataConfig) -> None:
        if not config.root:
            raise DataError(f"dataset {self.name} needs --data-root (the folder that holds {self.folder}/)")
        root = Path(config.root).expanduser()
        base = root / self.folder
        if not base.is_dir():
            if config.download:
                self._download(root)
            else:
                raise DataError(f"{self.name} not found: expected the official layout at {base}; "
                                f"copy it there, or pass --download on a machine with internet")
        splits = {}
        for split, files in (("train", self.train_files), ("test", self.test_files)):
            xs, ys = [], []
            for f in files:
                batch = _read_batch(base / f)
                if "data" not in batch or self.label_key not in batch:
                    raise DataError(f"CIFAR file {base / f} lacks 'data' or '{self.label_key}'")
                x = np.asarray(batch["data"], dtype=np.uint8)
                if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
                    raise DataError(f"CIFAR file {base / f} has images of shape {x.shape[1:]}, expected 3072 bytes each")
                xs.append(x.reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[self.label_key], dtype=np.int64))
            x, y = np.concatenate(xs), np.concatenate(ys)
            splits[split] = (np.arange(len(y), dtype=np.int64), x, y)
        super().__init__(splits)

    def _download(self, root: Path) -> None:
        import torchvision  # noqa: PLC0415  (torchvision is only needed to download CIFAR (--download))

        try:
            getattr(torchvision.datasets, self.tv_class)(str(root), train=True, download=True)
        except Exception as exc:
            raise DataError(f"could not download {self.name} into {root} ({exc}); copy the official archive there") from exc

    @classmethod
    def default_train(cls) -> TrainConfig:
        # The paper's recipe: WRN-28-2, SGD lr 0.1, x0.1 at epochs 80 and 120, 150 epochs, no augmentation.
        return TrainConfig(model="wrn28_2", epochs=150, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                           weight_decay=5e-4, schedule="multistep", milestones=(80, 120), gamma=0.1)


@register_dataset("cifar10")
class Cifar10Dataset(_Cifar):
    """CIFAR-10 (50,000 train / 10,000 test, 10 classes) from the official python layout."""

    name = "cifar10"
    num_classes = 10
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    tv_class = "CIFAR10"


@register_dataset("cifar100")
class Cifar100Dataset(_Cifar):
    """CIFAR-100 (50,000 train / 10,000 test, 100 fine classes) from the official python layout."""

    name = "cifar100"
    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    tv_class = "CIFAR100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
