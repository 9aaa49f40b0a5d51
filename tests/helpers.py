"""Shared helpers of the test suite."""

import gzip
import os

import torch

from patchgan_fast.ops import _backend


#: A tiny Patch-GAN configuration for tests. It trains on the CPU even where a GPU is present, so a trained
#: model scores the CPU tensors the tests build, and results match across runs and machines bit for bit.
SMALL = dict(image_size=32, patch_size=8, width=8, depth=2, disc_width=8, disc_layers=2, batch_size=16, lr=2e-3,
             progress=False, device="cpu")


def has_cuda_ops() -> bool:
    ext = _backend.extension()
    return ext is not None and ext.build_info()["cuda"]


def random_images(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)
    return torch.rand(shape, generator=g).to(dtype=dtype, device=device)


def blobs(n, size=32, seed=0, abnormal=False):
    """Synthetic 'normal' images: two soft blobs on a dark background with noise, uint8 [n, 1, S, S].
    Abnormal ones also hold a bright square, obviously unlike anything normal."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(2):
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            r = 3 + 4 * float(torch.rand(1, generator=g))
            out[i, 0] += 0.6 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        if abnormal:
            y, x = torch.randint(0, size - 6, (2,), generator=g).tolist()
            out[i, 0, y:y + 6, x:x + 6] = 1.0
    out += 0.02 * torch.randn(out.shape, generator=g)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def write_idx(path, array, code):
    """Writes a gzipped idx file (code 8: uint8, 12: int32), like the MNIST distribution's."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(">u1" if code == 8 else ">i4").tobytes())


def write_fashion_mnist(folder, n_train, n_test, seed=0):
    """Random idx files laid out like Fashion-MNIST's (labels cycle through the 10 classes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)), 8)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10, 8)


def torchrun_cpu_env(tmp_path) -> dict:
    """The environment of a two-rank torchrun test: CPU ranks (gloo) even on a GPU machine, one thread each;
    temporary files (torchrun's log folders among them) under the test's ``tmp_path``."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp)}
