"""One record per dataset: the facts every part of clustune reads (classes, image shape,
channels, the usual threat radius, augmentation, where the files come from). The loaders live
in :mod:`trainable._data`; nothing here imports them, so configs can be checked cheaply."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Dataset", "DATASETS"]


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: int
    channels: int
    image_size: int  # square images of image_size x image_size pixels
    default_eps: float  # Linf radius of the usual threat model (images in [0, 1])
    default_l2_eps: float  # L2 radius of the usual L2 threat model
    crop_padding: int  # pixels of zero padding for random-crop augmentation
    flip: bool  # horizontal flips keep the label
    source: str  # where the files come from (README, "Data")


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    # L2 radii: CIFAR-10 0.5 as RobustBench's L2 leaderboard; MNIST-like 28x28 images 1.5, the
    # low end of the 1.5-2 used for MNIST's L2 models (Croce and Hein's FAB and AutoAttack
    # papers); 8x8 digits the same radius per pixel (1.5 * 8 / 28, about 0.43, taken as 0.5)
    Dataset("fashion-mnist", 10, 1, 28, 0.1, 1.5, 2, True,
            "apt-get install dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)"),
    Dataset("digits", 10, 1, 8, 0.1, 0.5, 1, False, "scikit-learn's bundled 8x8 digits"),
    Dataset("cifar10", 10, 3, 32, 8 / 255, 0.5, 4, True,
            "a cifar-10-batches-py folder or cifar-10-python.tar.gz named by data.root"),
)}
