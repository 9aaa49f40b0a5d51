"""Brain MRI like real screening data: synthetic subjects from two real T1 brains, registered and
intensity-standardized as real pipelines leave them, with lesions modelled on pathology (``brain_lesions``).

Anatomy: the MNI ICBM152 2009a symmetric T1 with its grey- and white-matter probability maps (shipped in the
``nilearn`` wheel as package data; read with nibabel, nothing downloaded) and Colin27 (``ch2bet`` of the Debian
package ``mricron-data``; its tissue classes from its intensities). Both live in MNI space at 1 mm.

A subject is one template (they alternate) warped by a random smooth displacement field (2-4 mm, smooth over
about 2.5 cm: inter-subject anatomy) and a residual registration error (+-3 degrees about each axis, +-3 % scale,
+-2 mm shift), then imaged with a contrast change (gamma 0.85-1.15), a smooth multiplicative bias field (about
+-10 %) and Rician noise (white matter SNR 15-30), and standardized per subject inside the brain (its 99th
percentile maps to 0.95). Outside the brain is 0 (skull-stripped). Slices are axial, 208 mm square (1.6 mm pixels at
128 x 128), at 2 mm steps; positions in blocks of five: three train, one tests, one is a gap, so test slices come
from held-out positions, and training and test subjects are different subjects. Each test slice appears twice,
normal and with one lesion (the kinds in turn). Everything is seeded.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .brain_lesions import KINDS, draw
from .brain_mri import BrainMRISplit, find_brain_volume

MNI_ENV_VAR = "PATCHGAN_FAST_MNI"
_MNI_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
FOV_MM = 208.0  # the brains span 180 mm front to back: 14 mm to spare at each end for warps and misregistration
_CENTRE = (0.0, -16.0, 20.0)  # x, y, z (mm, MNI) the slices are centred on (the brains' middle front to back)
_Z_MM = np.arange(-30.0, 76.0, 2.0)  # axial positions
QUICK = dict(size=64, train_subjects=12, test_subjects=6)


def find_mni_template(path: Optional[str | os.PathLike] = None) -> dict[str, Path]:
    """The MNI ICBM152 2009a T1, GM and WM files: in ``path`` (a folder), ``$PATCHGAN_FAST_MNI``, or the
    installed ``nilearn`` package's data folder.

    Raises:
        FileNotFoundError: saying where it looked and how to get them.
    """
    folders = [Path(p) for p in (path, os.environ.get(MNI_ENV_VAR)) if p]
    spec = importlib.util.find_spec("nilearn")
    if spec is not None and spec.submodule_search_locations:
        folders.append(Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data")
    for folder in folders:
        files = {k: folder / name for k, name in _MNI_FILES.items()}
        if all(f.is_file() for f in files.values()):
            return files
    raise FileNotFoundError(
        f"the MNI ICBM152 2009a files ({', '.join(_MNI_FILES.values())}) were not found (looked in "
        f"{', '.join(map(str, folders)) or 'no folder'}). Install nilearn (`pip install nilearn`, or "
        f"`bash scripts/setup.sh --data`), which ships them, or set {MNI_ENV_VAR} to a folder holding them.")


def _canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


class _Template:
    """One template as a [1, 4, Z, Y, X] tensor (T1 relative to its brain's 99th percentile, GM, WM, brain),
    pre-smoothed for ``px_mm`` pixels, and the map from world mm to grid_sample's normalized coordinates."""

    def __init__(self, t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, brain: np.ndarray, affine: np.ndarray,
                 px_mm: float):
        idx = np.argwhere(brain)
        lo, hi = np.maximum(idx.min(0) - 4, 0), np.minimum(idx.max(0) + 5, brain.shape)
        crop = tuple(slice(a, b) for a, b in zip(lo, hi))
        t1 = np.where(brain, t1, 0)[crop] / np.percentile(t1[brain], 99)
        sigma = max(0.0, 0.42 * px_mm - 0.3)  # anti-aliasing for pixels larger than the 1 mm voxels
        chans = [t1, gm[crop], wm[crop], brain[crop].astype(np.float32)]
        if sigma > 0:
            chans = [ndimage.gaussian_filter(c, sigma) for c in chans]
        self.volume = torch.from_numpy(np.stack([c.transpose(2, 1, 0) for c in chans])[None].astype(np.float32))
        shape = np.array(brain[crop].shape, dtype=np.float64)  # (X, Y, Z) voxels
        offset = np.eye(4)
        offset[:3, 3] = lo
        self.world_to_voxel = np.linalg.inv(affine @ offset)
        self.shape = shape

    def sample(self, points: np.ndarray) -> torch.Tensor:
        """Values at world points [..., 3] (mm): [4, ...] (T1, GM, WM, brain)."""
        vox = points @ self.world_to_voxel[:3, :3].T + self.world_to_voxel[:3, 3]
        grid = torch.from_numpy((2 * vox / (self.shape - 1) - 1).astype(np.float32))
        flat = grid.reshape(1, -1, 1, 1, 3)
        out = F.grid_sample(self.volume, flat, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(4, *points.shape[:-1])


def _colin(path, px_mm) -> _Template:
    t1, affine = _canonical(find_brain_volume(path))
    brain = ndimage.binary_fill_holes(t1 > 0.02 * t1.max())
    inside = t1[brain]
    centres = np.quantile(inside, [0.1, 0.5, 0.9])  # CSF, GM, WM: three-class k-means on the intensities
    for _ in range(20):
        label = np.abs(inside[:, None] - centres[None, :]).argmin(1)
        centres = np.array([inside[label == k].mean() for k in range(3)])
    cut_gm, cut_wm = (centres[0] + centres[1]) / 2, (centres[1] + centres[2]) / 2
    gm = np.where(brain & (t1 >= cut_gm) & (t1 < cut_wm), 1.0, 0.0).astype(np.float32)
    wm = np.where(brain & (t1 >= cut_wm), 1.0, 0.0).astype(np.float32)
    return _Template(t1, ndimage.gaussian_filter(gm, 0.7), ndimage.gaussian_filter(wm, 0.7), brain, affine, px_mm)


def _mni(path, px_mm) -> _Template:
    files = find_mni_template(path)
    t1, affine = _canonical(files["t1"])
    gm, _ = _canonical(files["gm"])
    wm, _ = _canonical(files["wm"])
    gm, wm = gm / max(gm.max(), 1e-6), wm / max(wm.max(), 1e-6)
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(gm + wm > 0.3, iterations=2))
    return _Template(t1, gm, wm, brain, affine, px_mm)


@functools.lru_cache(maxsize=4)
def _templates(mni_path: Optional[str], colin_path: Optional[str], px_mm: float) -> tuple[_Template, _Template]:
    return _mni(mni_path, px_mm), _colin(colin_path, px_mm)


def _smooth_field(rng: np.random.Generator, channels: int, shape, sigma_px: float, std: float) -> np.ndarray:
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap") for _ in range(channels)])
    return field * (std / max(field.std(), 1e-12))


def _slice_points(z_mm, size: int) -> np.ndarray:
    """World coordinates (x, y, z mm) of the pixel centres of axial slices at ``z_mm``: [Z, S, S, 3]."""
    px = FOV_MM / size
    cols = _CENTRE[0] + FOV_MM / 2 - (np.arange(size) + 0.5) * px  # radiological: the subject's right on the left
    rows = _CENTRE[1] + FOV_MM / 2 - (np.arange(size) + 0.5) * px  # anterior at the top
    zz, yy, xx = np.meshgrid(np.asarray(z_mm, dtype=np.float64), rows, cols, indexing="ij")
    return np.stack([xx, yy, zz], -1)


class _Subject:
    """One synthetic subject: its template, warp, bias field, gamma and noise level."""

    STEP_MM = 4.0  # grid of the smooth fields

    def __init__(self, rng: np.random.Generator, template: _Template):
        self.template = template
        angles = np.deg2rad(rng.uniform(-3, 3, 3))
        cx, sx = np.cos(angles), np.sin(angles)
        rx = np.array([[1, 0, 0], [0, cx[0], -sx[0]], [0, sx[0], cx[0]]])
        ry = np.array([[cx[1], 0, sx[1]], [0, 1, 0], [-sx[1], 0, cx[1]]])
        rz = np.array([[cx[2], -sx[2], 0], [sx[2], cx[2], 0], [0, 0, 1]])
        self.linear = rz @ ry @ rx @ np.diag(1 + rng.uniform(-0.03, 0.03, 3))
        self.shift = rng.uniform(-2, 2, 3)
        self.lo = np.array([_CENTRE[0] - FOV_MM / 2, _CENTRE[1] - FOV_MM / 2, _Z_MM[0] - 10])
        extent = np.array([FOV_MM, FOV_MM, _Z_MM[-1] - _Z_MM[0] + 20])
        shape = tuple(int(np.ceil(e / self.STEP_MM)) + 1 for e in extent[::-1])  # (z, y, x)
        self.extent = extent
        # Gaussian-smoothed noise: sigma 10 mm (the warp varies over 2-3 cm), 30 mm for the bias field
        self.displacement = torch.from_numpy(
            _smooth_field(rng, 3, shape, 10 / self.STEP_MM, rng.uniform(2, 4)).astype(np.float32))[None]
        self.bias = torch.from_numpy(_smooth_field(rng, 1, shape, 30 / self.STEP_MM, 0.08).astype(np.float32))[None]
        self.gamma = rng.uniform(0.85, 1.15)
        self.snr = rng.uniform(15, 30)

    def _field(self, field: torch.Tensor, points: np.ndarray) -> np.ndarray:
        grid = torch.from_numpy((2 * (points - self.lo) / self.extent - 1).astype(np.float32)).reshape(1, -1, 1, 1, 3)
        out = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(field.shape[1], *points.shape[:-1]).numpy()

    def slices(self, z_mm, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(noise-free T1, GM, WM, brain [4, Z, S, S]; the bias field [Z, S, S]) of the axial slices at ``z_mm``."""
        points = _slice_points(z_mm, size)
        centre = np.array(_CENTRE)
        moved = (points - centre) @ self.linear.T + centre + self.shift
        moved = moved + np.moveaxis(self._field(self.displacement, points), 0, -1)
        values = self.template.sample(moved).numpy()
        return values, np.exp(self._field(self.bias, points)[0])

    def image(self, t1: np.ndarray, brain: np.ndarray, bias: np.ndarray, wm_level: float,
              rng: np.random.Generator) -> np.ndarray:
        """The noise-free slice ``t1`` as the scanner shows it: contrast change, bias field, Rician noise; 0 outside
        the brain."""
        x = np.clip(t1, 0, None) ** self.gamma * bias
        sigma = wm_level ** self.gamma / self.snr
        noisy = np.hypot(x + sigma * rng.standard_normal(x.shape), sigma * rng.standard_normal(x.shape))
        return np.where(brain, noisy, 0.0)


def _positions(template: _Template, size: int, min_brain: float) -> np.ndarray:
    """The axial positions whose slice of the (unwarped) template holds at least ``min_brain`` of brain."""
    brain = template.sample(_slice_points(_Z_MM, size))[3].numpy() > 0.5
    return _Z_MM[brain.mean(axis=(1, 2)) >= min_brain]


def _seed(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) & 0xFFFFFFFF for p in parts])


class _Data:
    """The templates and axial positions for one slice size."""

    def __init__(self, size: int, path, mni_path, min_brain: float):
        if size < 32:
            raise ValueError(f"expected a slice size of at least 32 pixels, got {size}")
        self.size, self.px = size, FOV_MM / size
        self.templates = _templates(None if mni_path is None else str(mni_path), None if path is None else str(path),
                                    self.px)
        z_all = _positions(self.templates[0], size, min_brain)
        block = np.arange(len(z_all)) % 5
        self.z_train, self.z_test = z_all[block <= 2], z_all[block == 3]

    def render(self, seed: int, split: int, index: int, z_mm: np.ndarray, items: list[tuple[int, Optional[str]]]):
        """Subject ``index`` of ``split`` (1 train, 2 test, 3 pool) at ``z_mm``: one image per (position index,
        lesion kind or None) item, standardized by the subject's normal slices; (images, brain, lesion masks,
        kinds, sizes in mm)."""
        rng = _seed(seed, split, index)
        subject = _Subject(rng, self.templates[index % 2])
        values, bias = subject.slices(z_mm, self.size)
        t1, gm, wm, brain = values[0], values[1], values[2], values[3] > 0.5
        core = brain & (wm > 0.9)
        wm_level = float(np.median(t1[core])) if core.sum() > 50 else 0.8
        normal = np.stack([subject.image(t1[k], brain[k], bias[k], wm_level, rng) for k in range(len(z_mm))])
        scale = 0.95 / max(float(np.percentile(normal[brain], 99)), 1e-6)  # the subject's 99th percentile -> 0.95
        images, masks, kinds, sizes = [], [], [], []
        for k, kind in items:
            if kind is None:
                images.append(normal[k])
                masks.append(np.zeros_like(brain[k]))
                kinds.append("")
                sizes.append(0.0)
            else:
                lesioned, lesion = draw(kind, t1[k], gm[k], wm[k], brain[k], self.px, rng)
                images.append(subject.image(lesioned, brain[k], bias[k], wm_level, rng))
                masks.append(lesion.mask)
                kinds.append(kind)
                sizes.append(lesion.size_mm)
        rows = [k for k, _ in items]
        return np.clip(np.stack(images) * scale, 0, 1), brain[rows], np.stack(masks), kinds, sizes


def _split(parts, z_mm, subjects, lesions: bool) -> BrainMRISplit:
    """A :class:`BrainMRISplit` from per-subject (images, brain, masks, kinds, sizes)."""
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]).astype(np.float32)).unsqueeze(1)
    brain = torch.from_numpy(np.concatenate([p[1] for p in parts])).unsqueeze(1)
    extra = {}
    if lesions:
        masks = torch.from_numpy(np.concatenate([p[2] for p in parts])).unsqueeze(1)
        kinds = [k for p in parts for k in p[3]]
        extra = dict(lesions=masks, labels=torch.tensor([int(k != "") for k in kinds]), kinds=kinds,
                     sizes_mm=torch.tensor([s for p in parts for s in p[4]], dtype=torch.float32))
    return BrainMRISplit(images, brain, torch.from_numpy(np.concatenate(z_mm).astype(np.int64)),
                         subjects=torch.from_numpy(np.concatenate(subjects).astype(np.int64)), **extra)


def load_brain_subjects(
    size: int = 128,
    seed: int = 0,
    train_subjects: int = 24,
    test_subjects: int = 16,
    path: Optional[str | os.PathLike] = None,
    mni_path: Optional[str | os.PathLike] = None,
    min_brain: float = 0.2,
) -> tuple[BrainMRISplit, BrainMRISplit]:
    """The ``brain-mri`` benchmark: training slices of ``train_subjects`` subjects and test slices of
    ``test_subjects`` other subjects at held-out positions, each test slice once normal and once with a lesion
    (the kinds in turn).

    Args:
        size: slice side in pixels (208 mm across: 128 gives 1.6 mm pixels); ``QUICK`` holds the CI setting.
        path: Colin27's ``ch2bet.nii.gz`` or its folder (:func:`~.brain_mri.find_brain_volume`).
        mni_path: a folder with the MNI ICBM152 files (:func:`find_mni_template`).

    Returns:
        (train, test) :class:`~.brain_mri.BrainMRISplit` with ``slices`` (the position in mm) and ``subjects``
        (test subjects numbered after the training ones), and for the test split ``labels``, ``lesions`` (exact
        masks), ``kinds`` and ``sizes_mm``.
    """
    if train_subjects < 1 or test_subjects < 1:
        raise ValueError(f"expected at least one subject per split, got {train_subjects} training and "
                         f"{test_subjects} test subjects")
    data = _Data(size, path, mni_path, min_brain)
    zt, zs = data.z_train, data.z_test
    train = [data.render(seed, 1, i, zt, [(k, None) for k in range(len(zt))]) for i in range(train_subjects)]
    test = []
    for i in range(test_subjects):
        kinds = [KINDS[(i * len(zs) + k) % len(KINDS)] for k in range(len(zs))]
        test.append(data.render(seed, 2, i, zs, [(k, None) for k in range(len(zs))] + list(enumerate(kinds))))
    return (_split(train, [zt] * train_subjects, [np.full(len(zt), i) for i in range(train_subjects)], False),
            _split(test, [np.r_[zs, zs]] * test_subjects,
                   [np.full(2 * len(zs), train_subjects + i) for i in range(test_subjects)], True))


def brain_subjects_pool(size: int = 128, seed: int = 0, subjects: int = 12, anomaly_ratio: float = 0.6,
                        path: Optional[str | os.PathLike] = None, mni_path: Optional[str | os.PathLike] = None,
                        min_brain: float = 0.2) -> BrainMRISplit:
    """An unlabelled pool for the semi-supervised protocol: the training positions of ``subjects`` further
    subjects (neither training nor test subjects), lesions (the kinds in turn) in round(``anomaly_ratio`` x N)
    of its slices, shuffled. ``labels``, ``lesions`` and ``kinds`` say which, for reporting; a method never
    sees them.

    Raises:
        ValueError: a ratio outside [0, 1] or no subject.
    """
    if not 0 <= anomaly_ratio <= 1 or subjects < 1:
        raise ValueError(f"expected anomaly_ratio in [0, 1] and at least one subject, got {anomaly_ratio!r}, "
                         f"{subjects}")
    data = _Data(size, path, mni_path, min_brain)
    z = data.z_train
    n = subjects * len(z)
    rng = _seed(seed, 3, 1_000_003)
    sick = np.zeros(n, dtype=bool)
    sick[rng.permutation(n)[:int(round(anomaly_ratio * n))]] = True
    parts = []
    for i in range(subjects):
        items = [(k, KINDS[(i * len(z) + k) % len(KINDS)] if sick[i * len(z) + k] else None) for k in range(len(z))]
        parts.append(data.render(seed, 3, i, z, items))
    pool = _split(parts, [z] * subjects, [np.full(len(z), 10_000 + i) for i in range(subjects)], True)
    order = torch.from_numpy(rng.permutation(n))
    return BrainMRISplit(pool.images[order], pool.brain[order], pool.slices[order], pool.lesions[order],
                         pool.labels[order], pool.subjects[order], [pool.kinds[i] for i in order.tolist()],
                         pool.sizes_mm[order])


__all__ = ["load_brain_subjects", "brain_subjects_pool", "find_mni_template", "KINDS", "QUICK"]
