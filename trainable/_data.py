"""Datasets kept on the device as uint8 tensors, with a seeded stratified validation split.

Nothing here downloads unless the user asks for it (``data.download: true`` for CIFAR-10).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ._datasets import DATASETS
from ._errors import ClustuneError

__all__ = ["DataError", "ImageData", "load_data", "augment_batch"]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


class DataError(ClustuneError, RuntimeError):
    """A dataset is missing or corrupt; the message names the fix."""


@dataclass
class ImageData:
    """Train/val/test images as uint8 [N, C, H, W] tensors (on one device) and int64 labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # pixels of zero padding for random-crop augmentation
    flip: bool  # horizontal flips keep the label for this dataset

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: torch.device | str) -> ImageData:
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float in [0, 1]."""
    return x.float().div_(255.0)


def augment_batch(x: torch.Tensor, padding: int, flip: bool,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once."""
    n, c, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device="cpu").to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device="cpu").to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator, device="cpu") < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists():
            return candidate
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found under {root}: "
        "install it with `apt-get install dataset-fashion-mnist` or set data.root")


def _load_fashion_mnist(root: str | None):
    base = Path(root or os.environ.get("CLUSTUNE_FASHION_MNIST", FASHION_MNIST_ROOT))
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = _read_idx(_find(base, f"{prefix}-images-idx3-ubyte"), 0x00000803)
        y = _read_idx(_find(base, f"{prefix}-labels-idx1-ubyte"), 0x00000801)
        if len(x) != len(y):
            raise DataError(f"Fashion-MNIST {split} images and labels differ in length")
        parts[split] = (x[:, None], y)
    return parts, (0.2860,), (0.3530,)


def _load_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    mean = float(x_tr.mean() / 255.0)
    std = float(x_tr.std() / 255.0)
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}, (mean,), (std,)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: dicts, lists, bytes and numpy arrays.

    Python 3 pickles of protocol 2 write bytes as ``_codecs.encode(text, "latin1")``.
    """

    allowed = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _cifar_files() -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
    from torchvision.datasets import CIFAR10

    return CIFAR10.train_list, CIFAR10.test_list, CIFAR10.tgz_md5


def _load_cifar10(root: str | None, verify_md5: bool, download: bool):
    if root is None:
        raise DataError("cifar10 needs data.root: a cifar-10-batches-py folder, the folder that "
                        "holds it, or cifar-10-python.tar.gz")
    train_list, test_list, tgz_md5 = _cifar_files()
    path = Path(root).expanduser()
    if download and not path.exists():
        from torchvision.datasets import CIFAR10

        CIFAR10(str(path), download=True)
    blobs: dict[str, bytes] = {}
    if path.is_file():
        raw = path.read_bytes()
        if verify_md5 and _md5(raw) != tgz_md5:
            raise DataError(f"{path}: md5 mismatch, not the official cifar-10-python.tar.gz")
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        blobs[Path(member.name).name] = tar.extractfile(member).read()
        except tarfile.TarError as err:
            raise DataError(f"{path}: not a readable tar.gz archive ({err})") from err
    else:
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        if not folder.is_dir():
            raise DataError(f"CIFAR-10 not found at {path}: pass the cifar-10-batches-py folder or "
                            "cifar-10-python.tar.gz as data.root (data.download: true fetches it)")
        for name, _ in train_list + test_list:
            if (folder / name).is_file():
                blobs[name] = (folder / name).read_bytes()
    parts = {}
    for split, files in (("train", train_list), ("test", test_list)):
        xs, ys = [], []
        for name, md5 in files:
            if name not in blobs:
                raise DataError(f"CIFAR-10 file {name} missing under {path}")
            if verify_md5 and _md5(blobs[name]) != md5:
                raise DataError(f"CIFAR-10 file {name} under {path}: md5 mismatch (corrupt file)")
            try:
                entry = _ArrayUnpickler(io.BytesIO(blobs[name]), encoding="latin1").load()
                xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(entry["labels"], dtype=np.int64))
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
                raise DataError(f"CIFAR-10 file {name} under {path} is unreadable: {err}") from err
        parts[split] = (np.concatenate(xs), np.concatenate(ys))
    return parts, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def load_data(name: str, root: str | None = None, val_fraction: float = 0.1,
              train_subset: int | None = None, seed: int = 0, verify_md5: bool = True,
              download: bool = False) -> ImageData:
    """Load a dataset and split a seeded, stratified validation set off its training set."""
    if name == "fashion-mnist":
        parts, mean, std = _load_fashion_mnist(root)
    elif name == "digits":
        parts, mean, std = _load_digits()
    elif name == "cifar10":
        parts, mean, std = _load_cifar10(root, verify_md5, download)
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    facts = DATASETS[name]
    classes, pad, flip = facts.classes, facts.crop_padding, facts.flip
    x, y = parts["train"]
    x_tr, x_val, y_tr, y_val = train_test_split(
        x, y, test_size=val_fraction, stratify=y, random_state=seed)
    if train_subset is not None and train_subset < len(y_tr):
        x_tr, _, y_tr, _ = train_test_split(
            x_tr, y_tr, train_size=train_subset, stratify=y_tr, random_state=seed)
    x_te, y_te = parts["test"]

    def t(a: np.ndarray, dtype=None) -> torch.Tensor:
        return torch.from_numpy(np.array(a)).to(dtype or torch.uint8)

    return ImageData(name, t(x_tr), t(y_tr, torch.long), t(x_val), t(y_val, torch.long),
                     t(x_te), t(y_te, torch.long), classes, mean, std, pad, flip)
