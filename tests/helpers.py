"""Shared helpers of the test suite."""

import gzip
import os
from pathlib import Path

import numpy as np
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


def write_brain_templates(folder, seed=0):
    """Small synthetic stand-ins for the two brain templates in MNI space (2 mm voxels): ``ch2bet.nii.gz``
    (skull-stripped T1) and the MNI ICBM152 T1, GM and WM files, an ellipsoidal brain with a grey-matter rim,
    white matter, ventricles and some texture. Returns ``folder`` (pass it as ``path`` and ``mni_path``)."""
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-98, -134, -72)
    i, j, k = np.mgrid[0:99, 0:117, 0:95].astype(np.float32)
    x, y, z = 2 * i - 98, 2 * j - 134, 2 * k - 72
    r = np.sqrt((x / 68) ** 2 + ((y + 18) / 86) ** 2 + ((z - 15) / 62) ** 2)
    rng = np.random.default_rng(seed)
    wiggle = 0.04 * np.sin(x / 7.0) * np.cos(y / 9.0) + 0.02 * rng.standard_normal(r.shape)
    brain = r < 1
    ventricle = np.sqrt((np.abs(x) / 10 - 0.8) ** 2 + ((y + 5) / 25) ** 2 + ((z - 15) / 14) ** 2) < 1
    wm = (brain & (r + wiggle < 0.8) & ~ventricle).astype(np.float32)
    gm = (brain & ~ventricle & (wm == 0)).astype(np.float32)
    t1 = np.where(brain, 0.3 + 0.4 * gm + 0.7 * wm + 0.03 * np.sin(z / 5.0), 0)
    nib.save(nib.Nifti1Image((t1 * 120).astype(np.uint8), affine), folder / "ch2bet.nii.gz")
    head = np.where(r < 1.15, np.maximum(t1, 0.2), 0)  # the MNI T1 is not skull-stripped
    for name, vol in (("t1", head), ("gm", gm), ("wm", wm)):
        vol = (vol / vol.max() * 255).astype(np.uint8)
        nib.save(nib.Nifti1Image(vol, affine), folder / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
    return folder
