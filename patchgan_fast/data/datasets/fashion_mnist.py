"""Fashion-MNIST from its idx files, with the one-class protocol of the novelty-detection literature:
train on the 6,000 training images of one class (zero-padded to 32x32), test on all 10,000 test
images with that class normal and the other nine abnormal.

The Debian package ``dataset-fashion-mnist`` installs the files in /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ENV_VAR = "PATCHGAN_FAST_FASHION_MNIST"
_SEARCH = ("/usr/share/datasets/fashion-mnist",)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an idx file (optionally gzipped): the magic number gives the type and the rank."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic {data[:4]!r})")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown idx element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {arr.size} (truncated?)")
    return arr.reshape(shape)


def find_fashion_mnist(path: Optional[str | os.PathLike] = None) -> Path:
    candidates = [Path(p) for p in (path, os.environ.get(ENV_VAR)) if p] + [Path(p) for p in _SEARCH]
    for c in candidates:
        if (c / "train-images-idx3-ubyte.gz").exists() or (c / "train-images-idx3-ubyte").exists():
            return c
    raise FileNotFoundError(
        f"Fashion-MNIST idx files not found (looked in {', '.join(map(str, candidates))}). Install the Debian "
        f"package dataset-fashion-mnist (`sudo apt-get install dataset-fashion-mnist`), or set {ENV_VAR} to a folder "
        "holding train-images-idx3-ubyte(.gz) and the other three files."
    )


def _load(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    def pick(name):
        return folder / name if (folder / name).exists() else folder / f"{name}.gz"

    images = read_idx(pick(f"{split}-images-idx3-ubyte"))
    labels = read_idx(pick(f"{split}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    x = F.pad(torch.from_numpy(images.copy()).unsqueeze(1), (2, 2, 2, 2))  # 28x28 -> 32x32, zero padded
    return x, torch.from_numpy(labels.astype(np.int64))


def one_class_split(normal_class: int, path: Optional[str | os.PathLike] = None) -> tuple[Tensor, Tensor, Tensor]:
    """The one-class protocol for ``normal_class`` (0-9).

    Returns:
        (train uint8 [6000, 1, 32, 32] of that class, test uint8 [10000, 1, 32, 32], test labels
        int64 [10000] with 0 = the normal class and 1 = any other class)
    """
    if not 0 <= normal_class <= 9:
        raise ValueError(f"normal_class must be 0-9 ({', '.join(f'{i}={c}' for i, c in enumerate(CLASSES))}), got {normal_class}")
    folder = find_fashion_mnist(path)
    train_x, train_y = _load(folder, "train")
    test_x, test_y = _load(folder, "t10k")
    return train_x[train_y == normal_class], test_x, (test_y != normal_class).long()


def semi_supervised_split(normal_class: int, labelled: Optional[int] = None, anomaly_ratio: float = 0.6, seed: int = 0,
                          path: Optional[str | os.PathLike] = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The semi-supervised protocol for ``normal_class``: labelled normal images and an unlabelled pool of as
    many training images, an ``anomaly_ratio`` share of them from the other nine classes and the rest normal
    images the labelled set does not hold (the setting of SAGAN and DDAD, at their ratio 0.6). The test
    split is the one-class protocol's.

    Args:
        labelled: at most how many labelled images (a seeded random choice of the class's 6,000); fewer when the
            class cannot spare them, and by default as many as leave enough of the class for the pool's normal
            share (4,285 at ratio 0.6).

    Returns:
        (labelled uint8 [L, 1, 32, 32], pool uint8 [L, 1, 32, 32], pool labels [L] (1 = another class; for
        reporting the pool, never for training), test uint8 [10000, 1, 32, 32], test labels [10000])

    Raises:
        ValueError: a class outside 0-9, a ratio outside [0, 1), or ``labelled`` not a positive int.
    """
    if not 0 <= anomaly_ratio < 1:
        raise ValueError(f"anomaly_ratio must be in [0, 1), got {anomaly_ratio!r}")
    normal, test_x, test_y = one_class_split(normal_class, path)
    train_x, train_y = _load(find_fashion_mnist(path), "train")
    n_class = len(normal)
    most = int(n_class / (2 - anomaly_ratio))  # labelled + (1 - ratio) * labelled <= n_class
    if labelled is not None and (isinstance(labelled, bool) or not isinstance(labelled, int) or labelled < 1):
        raise ValueError(f"labelled must be a positive int, got {labelled!r}")
    labelled = most if labelled is None else min(labelled, most)
    if labelled < 1:
        raise ValueError(f"the class has {n_class} training images, too few for a labelled set and a pool")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_class, generator=g)
    n_abnormal = int(round(labelled * anomaly_ratio))
    others = (train_y != normal_class).nonzero().flatten()
    abnormal = others[torch.randperm(len(others), generator=g)[:n_abnormal]]
    pool = torch.cat([normal[order[labelled:2 * labelled - n_abnormal]], train_x[abnormal]])
    pool_labels = torch.cat([torch.zeros(labelled - n_abnormal, dtype=torch.int64), torch.ones(n_abnormal, dtype=torch.int64)])
    shuffle = torch.randperm(len(pool), generator=g)
    return normal[order[:labelled]], pool[shuffle], pool_labels[shuffle], test_x, test_y
