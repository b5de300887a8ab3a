"""Datasets from synthetic files in the official formats; the split; batch augmentation."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import trainable._data as data_module
from trainable import DataError, augment_batch, load_data

# ------------------------------------------------------------ Fashion-MNIST

FMNIST_COUNTS = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]  # unbalanced on purpose (95 in all)


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_fashion_mnist(root: Path, compress: bool = True, seed: int = 0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y_train = np.repeat(np.arange(10), FMNIST_COUNTS)
    rng.shuffle(y_train)
    y_test = np.arange(20) % 10
    x_train = rng.integers(0, 256, (len(y_train), 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (len(y_test), 28, 28), dtype=np.uint8)
    suffix = ".gz" if compress else ""
    for prefix, x, y in (("train", x_train, y_train), ("t10k", x_test, y_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", x, 0x803, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", y, 0x801, compress)
    return x_train, y_train, x_test, y_test


def rows_by_bytes(x: np.ndarray) -> dict[bytes, int]:
    return {row.tobytes(): i for i, row in enumerate(x)}


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_loads_synthetic_idx(tmp_path, compress: bool) -> None:
    x_train, y_train, x_test, y_test = write_fashion_mnist(tmp_path, compress)
    d = load_data("fashion-mnist", root=str(tmp_path), val_fraction=0.2, seed=3)
    assert d.num_classes == 10 and d.in_channels == 1 and d.flip and d.crop_padding == 2
    assert d.x_train.shape == (76, 1, 28, 28) and d.x_val.shape == (19, 1, 28, 28)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.long
    # the test split is the file's, in order
    assert np.array_equal(d.x_test[:, 0].numpy(), x_test)
    assert np.array_equal(d.y_test.numpy(), y_test)
    # train + val is exactly the training file, each image with its own label
    index = rows_by_bytes(x_train)
    seen = []
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val)):
        for img, label in zip(x[:, 0].numpy(), y.tolist(), strict=True):
            i = index[img.tobytes()]
            assert y_train[i] == label
            seen.append(i)
    assert sorted(seen) == list(range(95))


def test_fashion_mnist_root_from_environment(tmp_path, monkeypatch) -> None:
    write_fashion_mnist(tmp_path / "fm")
    monkeypatch.setenv("CLUSTUNE_FASHION_MNIST", str(tmp_path / "fm"))
    assert len(load_data("fashion-mnist", val_fraction=0.2).y_test) == 20


def test_split_is_stratified_and_seeded(tmp_path) -> None:
    write_fashion_mnist(tmp_path)
    a = load_data("fashion-mnist", root=str(tmp_path), val_fraction=0.2, seed=1)
    b = load_data("fashion-mnist", root=str(tmp_path), val_fraction=0.2, seed=1)
    c = load_data("fashion-mnist", root=str(tmp_path), val_fraction=0.2, seed=2)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_val, c.x_val)
    for d in (a, c):
        val = torch.bincount(d.y_val, minlength=10).numpy()
        assert np.all(np.abs(val - 0.2 * np.array(FMNIST_COUNTS)) <= 1)


def test_digits_split_and_subset_are_stratified() -> None:
    d = load_data("digits", val_fraction=0.25, seed=0)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.num_classes == 10 and not d.flip
    total = torch.bincount(d.y_train, minlength=10) + torch.bincount(d.y_val, minlength=10)
    val = torch.bincount(d.y_val, minlength=10)
    assert ((val - 0.25 * total).abs() <= 1).all()
    assert len(d.y_train) + len(d.y_val) + len(d.y_test) == 1797
    small = load_data("digits", val_fraction=0.25, train_subset=200, seed=0)
    assert len(small.y_train) == 200
    share = torch.bincount(small.y_train, minlength=10).float() / 200
    full_share = torch.bincount(d.y_train, minlength=10).float() / len(d.y_train)
    assert ((share - full_share).abs() * 200 <= 1).all()
    assert torch.equal(small.x_val, d.x_val)  # the validation split does not depend on it


def test_truncated_idx_payload_raises(tmp_path) -> None:
    write_fashion_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated"):
        load_data("fashion-mnist", root=str(tmp_path))


def test_truncated_gzip_stream_raises(tmp_path) -> None:
    write_fashion_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot read"):
        load_data("fashion-mnist", root=str(tmp_path))


def test_corrupt_gzip_stream_raises(tmp_path) -> None:
    write_fashion_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    for i in range(20, 60):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError):
        load_data("fashion-mnist", root=str(tmp_path))


def test_wrong_magic_raises(tmp_path) -> None:
    write_fashion_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((20, 28), np.uint8), 0x802)
    with pytest.raises(DataError, match="magic"):
        load_data("fashion-mnist", root=str(tmp_path))


def test_image_label_count_mismatch_raises(tmp_path) -> None:
    write_fashion_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8), 0x801)
    with pytest.raises(DataError, match="differ in length"):
        load_data("fashion-mnist", root=str(tmp_path))


def test_missing_folder_names_the_fix(tmp_path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist", root=str(tmp_path / "nowhere"))


def test_unknown_dataset_raises() -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        load_data("mnist")


# ------------------------------------------------------------------ CIFAR-10

N_BATCH, N_TEST = 20, 10
CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class Malicious:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_cifar(folder: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The official layout: pickled dicts (protocol 2) with uint8 'data' [n, 3072], 'labels'."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    content = {}
    for b, name in enumerate(CIFAR_NAMES):
        n = N_TEST if name == "test_batch" else N_BATCH
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n) + b) % 10]
        entry = {"batch_label": f"batch {b}", "data": x, "labels": labels,
                 "filenames": [f"img_{b}_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        content[name] = (x, labels)
    return content


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def patch_md5s(monkeypatch, folder: Path, tgz: Path | None = None) -> None:
    train = [(n, md5(folder / n)) for n in CIFAR_NAMES[:5]]
    test = [("test_batch", md5(folder / "test_batch"))]
    tgz_md5 = md5(tgz) if tgz is not None else "0" * 32
    monkeypatch.setattr(data_module, "_cifar_files", lambda: (train, test, tgz_md5))


def check_cifar(d, content) -> None:
    assert d.x_train.shape[1:] == (3, 32, 32) and d.x_test.shape == (N_TEST, 3, 32, 32)
    assert len(d.y_train) + len(d.y_val) == 5 * N_BATCH and len(d.y_val) == 10
    x_test, y_test = content["test_batch"]
    assert np.array_equal(d.x_test.numpy(), x_test.reshape(-1, 3, 32, 32))
    assert d.y_test.tolist() == y_test
    # first 1024 bytes of a row are the red plane, row-major
    assert np.array_equal(d.x_test[0, 0].numpy().ravel(), x_test[0, :1024])
    rows = {}
    for name in CIFAR_NAMES[:5]:
        x, labels = content[name]
        rows.update({r.tobytes(): lab for r, lab in zip(x, labels, strict=True)})
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val)):
        for img, label in zip(x.numpy(), y.tolist(), strict=True):
            assert rows[img.reshape(-1).tobytes()] == label


def test_cifar_official_md5s_refuse_synthetic_files(tmp_path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match="md5 mismatch"):
        load_data("cifar10", root=str(tmp_path), verify_md5=True)


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar_loads_without_verification(tmp_path, point_at: str) -> None:
    content = write_cifar(tmp_path / "cifar-10-batches-py")
    root = tmp_path if point_at == "parent" else tmp_path / "cifar-10-batches-py"
    d = load_data("cifar10", root=str(root), verify_md5=False)
    check_cifar(d, content)
    assert d.flip and d.crop_padding == 4


def test_cifar_loads_with_matching_md5s(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    content = write_cifar(folder)
    patch_md5s(monkeypatch, folder)
    check_cifar(load_data("cifar10", root=str(tmp_path), verify_md5=True), content)
    # one flipped byte is caught
    raw = bytearray((folder / "data_batch_3").read_bytes())
    raw[-10] ^= 0x01
    (folder / "data_batch_3").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="data_batch_3.*md5 mismatch"):
        load_data("cifar10", root=str(tmp_path), verify_md5=True)


def make_archive(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for name in CIFAR_NAMES:
            tar.add(folder / name, arcname=f"cifar-10-batches-py/{name}")


def test_cifar_loads_from_tar_gz(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "src" / "cifar-10-batches-py"
    content = write_cifar(folder)
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(folder, archive)
    with pytest.raises(DataError, match="md5 mismatch"):
        load_data("cifar10", root=str(archive), verify_md5=True)
    check_cifar(load_data("cifar10", root=str(archive), verify_md5=False), content)
    patch_md5s(monkeypatch, folder, archive)
    check_cifar(load_data("cifar10", root=str(archive), verify_md5=True), content)


def test_cifar_not_an_archive(tmp_path) -> None:
    bogus = tmp_path / "cifar-10-python.tar.gz"
    bogus.write_bytes(b"not a tar file at all")
    with pytest.raises(DataError, match="tar.gz"):
        load_data("cifar10", root=str(bogus), verify_md5=False)


@pytest.mark.parametrize("verify", [False, True])
def test_cifar_malicious_pickle_is_refused(tmp_path, monkeypatch, verify: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "pwned"
    evil = {"data": Malicious(str(marker)), "labels": [0]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(evil, protocol=2))
    patch_md5s(monkeypatch, folder)  # even files with the "right" checksum are not trusted
    with pytest.raises(DataError, match="data_batch_2.*unreadable"):
        load_data("cifar10", root=str(tmp_path), verify_md5=verify)
    assert not marker.exists()


def test_cifar_missing_pieces(tmp_path) -> None:
    with pytest.raises(DataError, match="data.root"):
        load_data("cifar10", root=None)
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        load_data("cifar10", root=str(tmp_path / "nowhere"))
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4 missing"):
        load_data("cifar10", root=str(tmp_path), verify_md5=False)


# ------------------------------------------------------------- augmentation


def random_images(n: int = 32, c: int = 3, h: int = 6, w: int = 5) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0)) + 0.1


def crop_offsets(x: torch.Tensor, out: torch.Tensor, p: int, flipped: bool) -> list[tuple]:
    """Per image, the (dy, dx) whose slice of the zero-padded input equals the output."""
    n, c, h, w = x.shape
    found = []
    for i in range(n):
        src = x[i].flip(2) if flipped else x[i]
        padded = torch.zeros(c, h + 2 * p, w + 2 * p)
        padded[:, p:p + h, p:p + w] = src
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(padded[:, dy:dy + h, dx:dx + w], out[i])]
        found.append(matches[0] if matches else None)
    return found


@pytest.mark.parametrize("p", [1, 2, 4])
def test_crops_are_shifted_slices_of_the_padded_input(p: int) -> None:
    x = random_images()
    out = augment_batch(x, p, False, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    offsets = crop_offsets(x, out, p, flipped=False)
    assert None not in offsets
    assert len(set(offsets)) > 3  # shifts vary across the batch


def test_no_padding_no_flip_is_identity() -> None:
    x = random_images()
    assert torch.equal(augment_batch(x, 0, False), x)


def test_flips_only_when_enabled() -> None:
    x = random_images(64)
    out = augment_batch(x, 0, True, torch.Generator().manual_seed(2))
    same = [torch.equal(out[i], x[i]) for i in range(64)]
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    assert all(a or b for a, b in zip(same, flipped, strict=True))
    assert 10 < sum(flipped) < 54
    # with padding and flips off, no output matches a flipped crop
    out = augment_batch(x, 2, False, torch.Generator().manual_seed(3))
    assert None not in crop_offsets(x, out, 2, flipped=False)
    assert crop_offsets(x, out, 2, flipped=True).count(None) == 64


def test_crop_and_flip_together() -> None:
    x = random_images(48)
    out = augment_batch(x, 2, True, torch.Generator().manual_seed(4))
    plain = crop_offsets(x, out, 2, flipped=False)
    mirrored = crop_offsets(x, out, 2, flipped=True)
    assert all(a is not None or b is not None for a, b in zip(plain, mirrored, strict=True))
    assert any(b is not None and a is None for a, b in zip(plain, mirrored, strict=True))


def test_augmentation_is_seeded_and_works_on_uint8() -> None:
    x = (random_images() * 200).to(torch.uint8)
    a = augment_batch(x, 2, True, torch.Generator().manual_seed(5))
    b = augment_batch(x, 2, True, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.uint8
