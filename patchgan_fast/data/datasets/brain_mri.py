"""The ``brain-mri-unregistered`` benchmark: real T1 brain MRI slices (the Colin27 template of the Debian
package ``mricron-data``) with seeded synthetic lesions and their ground truth, without registration (the
earlier, harder construction; ``brain_subjects`` builds ``brain-mri``). Also the split type both share.

Both volumes in that package are one subject, so the split guards against memorization: training
and test slices come from interleaved blocks of axial slices with gaps between them, and every slice
gets its own random rotation, scaling, intensity scale, bias field and noise, drawn with different
seeds for the training and the test split. Everything is seeded; the same arguments give the same tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ENV_VAR = "PATCHGAN_FAST_BRAIN_MRI"
_SEARCH = ("/usr/share/mricron/templates", "/usr/share/mricron")
_VOLUME = "ch2bet.nii.gz"


def find_brain_volume(path: Optional[str | os.PathLike] = None) -> Path:
    """Locates the skull-stripped 1 mm Colin27 volume ``ch2bet.nii.gz``.

    Looks at ``path`` (a file or a folder), then ``$PATCHGAN_FAST_BRAIN_MRI``, then where the Debian
    package ``mricron-data`` installs it.

    Raises:
        FileNotFoundError: saying where it looked and how to get the data.
    """
    candidates = [Path(p) for p in (path, os.environ.get(ENV_VAR)) if p] + [Path(p) for p in _SEARCH]
    for c in candidates:
        f = c / _VOLUME if c.is_dir() else c
        if f.is_file():
            return f
    raise FileNotFoundError(
        f"{_VOLUME} not found (looked in {', '.join(map(str, candidates))}). Install the Debian package "
        f"mricron-data (`sudo apt-get install mricron-data`, or `bash scripts/setup.sh --data`), or set {ENV_VAR} "
        "to a folder holding it."
    )


def _axial_slices(volume_path: Path) -> np.ndarray:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(volume_path)))  # RAS: axis 2 runs inferior -> superior
    vol = np.asarray(img.dataobj, dtype=np.float32)
    return np.flip(vol.transpose(2, 1, 0), axis=1).copy()  # [Z, A->P rows, R->L cols]: anterior up


@dataclass
class BrainMRISplit:
    """Images in [0, 1], ``[N, 1, S, S]`` float32, with brain masks, slice positions (indices here, mm in
    ``brain_subjects``) and, for the test split, lesion masks (all zero for normal slices), labels (1 = lesion)
    and lesion size bins; ``brain_subjects`` adds each slice's subject and each lesion's kind and size in mm."""

    images: Tensor
    brain: Tensor
    slices: Tensor
    lesions: Optional[Tensor] = None
    labels: Optional[Tensor] = None
    subjects: Optional[Tensor] = None
    kinds: Optional[list[str]] = None
    sizes_mm: Optional[Tensor] = None

    @property
    def bins(self) -> tuple[str, ...]:
        """The names of the size bins :attr:`size_bins` uses."""
        if self.sizes_mm is not None:
            from .brain_lesions import SIZE_BINS_MM

            return tuple(name for name, _ in SIZE_BINS_MM)
        return tuple(name for name, _ in SIZE_BINS)

    @property
    def size_bins(self) -> list[str]:
        """Per test image: '' for normal slices, else the lesion's size bin (by its size in mm where known,
        else by its area: ``SIZE_BINS``)."""
        if self.lesions is None:
            return [""] * len(self.images)
        if self.sizes_mm is not None:
            from .brain_lesions import size_bin_mm

            return [size_bin_mm(s) if s > 0 else "" for s in self.sizes_mm.tolist()]
        area = self.lesions.flatten(1).float().mean(1).tolist()
        return [size_bin(a) if a > 0 else "" for a in area]


def _warp(x: Tensor, gen: torch.Generator, degrees: float = 10.0, scale: tuple[float, float] = (0.9, 1.1)) -> Tensor:
    """Per-slice random rotation (uniform in +-``degrees``) and scaling about the image centre."""
    n = len(x)
    angle = (2 * torch.rand(n, generator=gen) - 1) * np.deg2rad(degrees)
    zoom = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=gen)
    cos, sin, zero = angle.cos() / zoom, angle.sin() / zoom, torch.zeros(n)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _augment(x: Tensor, brain: Tensor, gen: torch.Generator) -> Tensor:
    """Per-slice intensity scale, smooth multiplicative bias field and noise, inside the brain."""
    n, _, s, _ = x.shape
    scale = 0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
    coarse = 1 + 0.08 * torch.randn(n, 1, 4, 4, generator=gen)
    field = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)
    noise = 0.015 * torch.randn(x.shape, generator=gen)
    return torch.where(brain, (x * scale * field + noise), x).clamp(0, 1)


#: Lesion size bins by area, as a share of the image: (name, upper bound).
SIZE_BINS = (("small", 0.005), ("medium", 0.02), ("large", 1.0))


def size_bin(area_fraction: float) -> str:
    """The size bin of a lesion covering ``area_fraction`` of the image."""
    return next(name for name, upper in SIZE_BINS if area_fraction <= upper)


def insert_lesions(images: Tensor, brain: Tensor, gen: torch.Generator, radius: tuple[float, float] = (0.012, 0.12)):
    """Adds one synthetic lesion per image, inside the brain.

    A lesion is the union of 1 to 3 overlapping ellipses around a random brain pixel (radii drawn
    log-uniformly in ``radius``, as fractions of the image side, so sizes run from a few pixels to
    large; random orientations), with a soft rim, an intensity change of random sign (0.15 to 0.35:
    brighter or darker than tissue) and a multiplicative texture. It is cut to the brain mask.

    Returns:
        (lesioned images, lesion masks bool [N, 1, S, S]); a mask marks exactly the pixels whose
        value changed.
    """
    n, _, s, _ = images.shape
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    out, masks = images.clone(), torch.zeros_like(images, dtype=torch.bool)
    lo, hi = np.log(radius[0] * s), np.log(radius[1] * s)
    for i in range(n):
        inside = brain[i, 0].nonzero()
        cy, cx = inside[int(torch.randint(len(inside), (1,), generator=gen))].float().tolist()
        weight = torch.zeros(s, s)
        for j in range(1 + int(torch.randint(3, (1,), generator=gen))):
            ry, rx = torch.exp(lo + (hi - lo) * torch.rand(2, generator=gen)).tolist()
            if j:  # further lobes start within the first one
                cy, cx = cy + (float(torch.rand(1, generator=gen)) - 0.5) * ry, cx + (float(torch.rand(1, generator=gen)) - 0.5) * rx
            theta = float(torch.rand(1, generator=gen)) * np.pi
            dy, dx = yy - cy, xx - cx
            u = (dy * np.cos(theta) + dx * np.sin(theta)) / ry
            v = (-dy * np.sin(theta) + dx * np.cos(theta)) / rx
            weight = torch.maximum(weight, (1.5 - (u * u + v * v).sqrt()).clamp(0, 1))  # 1 inside, soft rim
        weight = weight * brain[i, 0]
        sign = 1.0 if float(torch.rand(1, generator=gen)) < 0.5 else -1.0
        amp = 0.15 + 0.2 * float(torch.rand(1, generator=gen))
        texture = 1 + 0.3 * torch.randn(s, s, generator=gen)
        new = (images[i, 0] + sign * amp * weight * texture).clamp(0, 1)
        masks[i, 0] = new != images[i, 0]
        out[i, 0] = new
    return out, masks


def _slices(size: int, path, min_brain: float = 0.2) -> tuple[Tensor, Tensor]:
    """The volume's axial slices padded square, resampled to ``size``, in [0, 1]; and which hold at least
    ``min_brain`` of brain."""
    vol = _axial_slices(find_brain_volume(path))
    _, h, w = vol.shape
    side = max(h, w)
    x = torch.from_numpy(vol).unsqueeze(1)
    x = F.pad(x, ((side - w) // 2, side - w - (side - w) // 2, (side - h) // 2, side - h - (side - h) // 2))
    x = F.interpolate(x, size=(size, size), mode="area")
    x = (x / float(np.percentile(vol[vol > 0], 99.5))).clamp(0, 1)
    return x, (x > 0.02).float().mean(dim=(1, 2, 3)) >= min_brain


def load_brain_mri(
    size: int = 128,
    path: Optional[str | os.PathLike] = None,
    seed: int = 0,
    min_brain: float = 0.2,
    train_copies: int = 4,
    test_copies: int = 8,
) -> tuple[BrainMRISplit, BrainMRISplit]:
    """Training and test splits of axial slices, resampled to ``size`` x ``size``.

    Slices with less than ``min_brain`` of the frame inside the brain are dropped. The rest are cut
    into blocks of 8: slices 0-4 of a block train, 5 is a gap, 6 is a test slice, 7 is a gap, so no
    test slice touches a training slice. Each training slice appears ``train_copies`` times and each
    test slice ``test_copies`` times, every copy with its own rotation (+-10 degrees), scaling (0.9 to
    1.1) and intensity augmentation; alternate test copies get a lesion (label 1), so the test split
    is balanced.

    Returns:
        (train, test) :class:`BrainMRISplit`.
    """
    x, keep = _slices(size, path, min_brain)
    idx = torch.arange(len(x))
    block = idx % 8
    tr = (keep & (block <= 4)).nonzero().flatten().repeat(train_copies)
    te = (keep & (block == 6)).nonzero().flatten().repeat_interleave(test_copies)
    train_gen = torch.Generator().manual_seed(seed)
    test_gen = torch.Generator().manual_seed(seed + 1_000_003)
    train_x, test_x = _warp(x[tr], train_gen), _warp(x[te], test_gen)
    train_brain, test_brain = train_x > 0.02, test_x > 0.02
    train = BrainMRISplit(_augment(train_x, train_brain, train_gen), train_brain, idx[tr])
    test_x = _augment(test_x, test_brain, test_gen)
    labels = (torch.arange(len(te)) % 2 == 1).long()
    lesions = torch.zeros_like(test_x, dtype=torch.bool)
    sick = labels == 1
    test_x[sick], lesions[sick] = insert_lesions(test_x[sick], test_brain[sick], test_gen)
    return train, BrainMRISplit(test_x, test_brain, idx[te], lesions, labels)


def brain_mri_pool(size: int = 128, path: Optional[str | os.PathLike] = None, seed: int = 0, copies: int = 2,
                   anomaly_ratio: float = 0.6) -> BrainMRISplit:
    """An unlabelled pool for the semi-supervised protocol: new copies of the training slice positions (never
    a test slice or its neighbours) with their own seeded rotation, scaling and intensity augmentation, and
    lesions in an ``anomaly_ratio`` share of them (:func:`insert_lesions`). ``labels`` and ``lesions`` say
    which, for reporting the pool; a method never sees them.

    Raises:
        ValueError: a ratio outside [0, 1].
    """
    if not 0 <= anomaly_ratio <= 1:
        raise ValueError(f"anomaly_ratio must be in [0, 1], got {anomaly_ratio!r}")
    x, keep = _slices(size, path)
    block = torch.arange(len(x)) % 8
    idx = (keep & (block <= 4)).nonzero().flatten().repeat(copies)
    gen = torch.Generator().manual_seed(seed + 2_000_029)
    pool_x = _warp(x[idx], gen)
    brain = pool_x > 0.02
    pool_x = _augment(pool_x, brain, gen)
    labels = torch.zeros(len(idx), dtype=torch.int64)
    labels[torch.randperm(len(idx), generator=gen)[:int(round(anomaly_ratio * len(idx)))]] = 1
    lesions = torch.zeros_like(pool_x, dtype=torch.bool)
    sick = labels == 1
    if bool(sick.any()):
        pool_x[sick], lesions[sick] = insert_lesions(pool_x[sick], brain[sick], gen)
    shuffle = torch.randperm(len(idx), generator=gen)
    return BrainMRISplit(pool_x[shuffle], brain[shuffle], idx[shuffle], lesions[shuffle], labels[shuffle])
