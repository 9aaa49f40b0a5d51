"""Synthetic lesions modelled on pathology, drawn into one T1 axial slice with its tissue maps.

Sizes are in millimetres (converted with the slice's pixel size; nothing is drawn smaller than 2 pixels
across) and intensities relative to the slice's white matter (WM), following what the pathology looks like on
T1-weighted images:

- ``tumour``: glioma-like, 10-50 mm across, solid (hypointense, darker than grey matter, which is about 0.74 x WM
  in these templates: 0.4-0.6 x WM; the T1 of solid glioma measured by MR fingerprinting is about twice white
  matter's and longer than grey matter's, Badve et al., AJNR 38(3), 2017) or
  ring-enhancing (contrast-enhanced rim 1.05-1.3 x WM around a necrotic core 0.25-0.45 x WM, near CSF), with
  vasogenic oedema (mildly hypointense, 0.75-0.9 x WM) spreading into the surrounding WM, and mass effect that
  pushes the anatomy around it outwards. (BraTS: Menze et al., IEEE TMI 34(10), 2015; Bakas et al., Sci Data 4,
  2017: "T1 hypo-intense tumour core, ring enhancement on T1-Gd around necrosis".)
- ``ms``: multiple-sclerosis-like, 3 to 8 ovoid foci 3-12 mm long in periventricular and deep WM, their long
  axis pointing away from the ventricles (Dawson's fingers), hypointense on T1 ("black holes", 0.4-0.7 x WM:
  van Walderveen et al., Neurology 50(5), 1998; Bitsch et al., AJNR 22(5), 2001).
- ``infarct``: a cortical-subcortical wedge 10-40 mm long in the lateral (middle cerebral artery) territory,
  its base on the cortex, chronic and hypointense, close to CSF (0.3-0.5 x WM: Allen et al., Stroke 43, 2012 on
  the T1 appearance of chronic infarcts).
- ``small``: one solitary round lesion 3-6 mm across in grey or white matter (lacune-like, hypointense close to
  CSF, 0.25-0.45 x WM, or hyperintense 1.15-1.35 x WM like an enhancing metastasis).

Each lesion's mask marks exactly the pixels whose noise-free value its tissue changed by more than ``TOLERANCE``,
against the anatomy as the lesion's mass effect left it: a tumour's mask holds its core, rim and oedema but not
the normal tissue its mass effect pushed aside, as expert annotations do (BraTS labels tumour and oedema). A
mask of every pixel the displacement moved would be a speckle over half the hemisphere, wherever an edge moved
by a fraction of a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

KINDS = ("tumour", "ms", "infarct", "small")
#: Nominal size range of each kind, in mm (tumour, small: diameter; ms: longest focus; infarct: wedge length).
SIZE_RANGES_MM = {"tumour": (10.0, 50.0), "ms": (3.0, 12.0), "infarct": (10.0, 40.0), "small": (3.0, 6.0)}
#: Size bins (mm) for the results tables: (name, upper bound).
SIZE_BINS_MM = (("3-7 mm", 7.0), ("7-15 mm", 15.0), ("15-30 mm", 30.0), ("30-50 mm", float("inf")))
TOLERANCE = 0.02  # a pixel counts as changed above this (intensities in [0, 1]; under half the noise's std)


@dataclass
class Lesion:
    """What :func:`draw` drew: the kind, its nominal size in mm (``SIZE_RANGES_MM``, raised to 2 pixels where a
    pixel is over 1.5 mm), the pixels its tissue changed (``mask``) and the anatomy it was drawn over (the slice
    as the mass effect left it: the input slice itself for every kind but the tumour)."""

    kind: str
    size_mm: float
    mask: np.ndarray
    anatomy: np.ndarray


def size_bin_mm(size_mm: float) -> str:
    return next(name for name, upper in SIZE_BINS_MM if size_mm <= upper)


def _disc_weight(dist: np.ndarray) -> np.ndarray:
    """1 inside (dist < 0), 0 outside, a one-pixel partial-volume edge between; ``dist`` in pixels."""
    return np.clip(0.5 - dist, 0.0, 1.0)


def _texture(rng: np.random.Generator, shape, amount: float = 0.04) -> np.ndarray:
    return 1.0 + amount * ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) / 0.28


def _sizes(kind: str, rng: np.random.Generator, px_mm: float) -> float:
    lo, hi = SIZE_RANGES_MM[kind]
    lo = max(lo, 2 * px_mm)  # nothing under 2 pixels across
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(lo, hi)))))


def _pick(rng: np.random.Generator, where: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(where)
    if len(ys) == 0:
        return None
    i = int(rng.integers(len(ys)))
    return float(ys[i]), float(xs[i])


def _blend(x: np.ndarray, weight: np.ndarray, value) -> np.ndarray:
    return x * (1 - weight) + value * weight


def _mass_effect(x: np.ndarray, brain: np.ndarray, cy: float, cx: float, radius_px: float, strength: float) -> np.ndarray:
    """The slice with the anatomy around (cy, cx) pushed outwards: the pixel at distance r > R samples the
    original at r - strength * R * exp(-(r - R) / R) (inside R the tumour replaces everything; the push fades
    over about one radius); the brain outline stays."""
    yy, xx = np.mgrid[0:x.shape[0], 0:x.shape[1]].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    r = np.maximum(np.hypot(dy, dx), 1e-6)
    shift = strength * radius_px * np.exp(-np.maximum(r - radius_px, 0) / radius_px)
    src = np.stack([yy - dy / r * shift, xx - dx / r * shift])
    moved = ndimage.map_coordinates(x, src, order=1, mode="nearest")
    return np.where(brain, moved, x)


def _tumour(x, gm, wm, brain, edge_mm, px_mm, rng, wm_level):
    d_mm = _sizes("tumour", rng, px_mm)
    r = d_mm / 2 / px_mm
    centre = _pick(rng, brain & (edge_mm >= d_mm / 2 * 0.7 + 3) & (wm + gm > 0.5))
    if centre is None:
        centre = _pick(rng, brain & (edge_mm >= edge_mm.max() * 0.6))
    cy, cx = centre
    anatomy = _mass_effect(x, brain, cy, cx, r, rng.uniform(0.15, 0.35))
    out = anatomy
    yy, xx = np.mgrid[0:x.shape[0], 0:x.shape[1]].astype(np.float64)
    angle = np.arctan2(yy - cy, xx - cx)
    lobes = 1 + sum(rng.uniform(-0.08, 0.08) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    rho = np.hypot(yy - cy, xx - cx) / lobes  # lobulated distance
    oedema_r = r * rng.uniform(1.3, 2.0)
    w_oedema = _disc_weight(rho - oedema_r) * np.clip(wm * 1.2, 0, 1) * brain
    out = _blend(out, w_oedema, rng.uniform(0.75, 0.9) * wm_level * _texture(rng, x.shape))
    w_tumour = _disc_weight(rho - r) * brain
    if rng.random() < 0.5:  # solid
        out = _blend(out, w_tumour, rng.uniform(0.4, 0.6) * wm_level * _texture(rng, x.shape, 0.06))
    else:  # ring-enhancing rim around a necrotic core
        out = _blend(out, w_tumour, rng.uniform(1.05, 1.3) * wm_level * _texture(rng, x.shape, 0.06))
        rim_px = max(2 * px_mm, rng.uniform(2.0, 5.0)) / px_mm
        core = _disc_weight(rho - max(r - rim_px, 1.0)) * brain
        out = _blend(out, core, rng.uniform(0.25, 0.45) * wm_level * _texture(rng, x.shape))
    return out, d_mm, anatomy


def _ms(x, gm, wm, brain, edge_mm, px_mm, rng, wm_level):
    ventricles = brain & (x < 0.45 * wm_level) & (edge_mm > 12)
    deep_wm = brain & (wm > 0.8) & (edge_mm > 6)
    if not deep_wm.any():
        deep_wm = brain & (wm > 0.5)
    to_vent = ndimage.distance_transform_edt(~ventricles) * px_mm if ventricles.any() else np.full(x.shape, np.inf)
    grad_y, grad_x = np.gradient(np.where(np.isfinite(to_vent), to_vent, 0.0))
    out, longest = x.copy(), 0.0
    yy, xx = np.mgrid[0:x.shape[0], 0:x.shape[1]].astype(np.float64)
    for _ in range(int(rng.integers(3, 9))):
        periventricular = deep_wm & (to_vent < 15)
        where = periventricular if periventricular.any() and rng.random() < 0.7 else deep_wm
        centre = _pick(rng, where)
        if centre is None:
            break
        cy, cx = centre
        length = _sizes("ms", rng, px_mm)
        half_long = length / 2 / px_mm
        half_short = max(1.0, half_long / rng.uniform(1.5, 2.5))  # >= 2 pixels across
        gy, gx = grad_y[int(cy), int(cx)], grad_x[int(cy), int(cx)]
        theta = np.arctan2(gy, gx) if (gy or gx) else rng.uniform(0, np.pi)  # long axis away from the ventricles
        dy, dx = yy - cy, xx - cx
        u = (dy * np.sin(theta) + dx * np.cos(theta)) / half_long
        v = (dy * np.cos(theta) - dx * np.sin(theta)) / half_short
        weight = _disc_weight((np.hypot(u, v) - 1) * min(half_long, half_short)) * brain
        out = _blend(out, weight, rng.uniform(0.4, 0.7) * wm_level * _texture(rng, x.shape))
        longest = max(longest, length)
    return out, longest, x


def _infarct(x, gm, wm, brain, edge_mm, px_mm, rng, wm_level):
    length = _sizes("infarct", rng, px_mm)
    ys, xs = np.nonzero(brain)
    cy, cx = ys.mean(), xs.mean()
    half_width = (xs.max() - xs.min()) / 2
    rim = brain & (edge_mm <= max(3.0, 1.5 * px_mm))  # the outermost pixels: the cortex
    lateral = np.abs(np.arange(x.shape[1])[None, :] - cx) > 0.35 * half_width
    base = _pick(rng, rim & (gm > 0.2) & lateral) or _pick(rng, rim)
    by, bx = base
    direction = np.array([cy - by, cx - bx])
    direction /= max(np.linalg.norm(direction), 1e-6)
    apex = np.array([by, bx]) + direction * length / px_mm
    yy, xx = np.mgrid[0:x.shape[0], 0:x.shape[1]].astype(np.float64)
    vy, vx = yy - apex[0], xx - apex[1]
    dist = np.hypot(vy, vx)
    cos = (-(vy * direction[0] + vx * direction[1])) / np.maximum(dist, 1e-6)  # angle to the axis, from the apex
    half_angle = np.deg2rad(rng.uniform(15, 30))
    inside = (np.arccos(np.clip(cos, -1, 1)) - half_angle) * np.maximum(dist, 1.0)  # ~ pixels outside the wedge
    weight = np.minimum(_disc_weight(inside), _disc_weight(dist - length / px_mm * 1.1)) * brain
    out = _blend(x, weight, rng.uniform(0.3, 0.5) * wm_level * _texture(rng, x.shape))
    return out, length, x


def _small(x, gm, wm, brain, edge_mm, px_mm, rng, wm_level):
    d_mm = _sizes("small", rng, px_mm)
    centre = _pick(rng, brain & (gm + wm > 0.7) & (edge_mm > d_mm)) or _pick(rng, brain & (gm + wm > 0.5))
    cy, cx = centre
    yy, xx = np.mgrid[0:x.shape[0], 0:x.shape[1]].astype(np.float64)
    weight = _disc_weight(np.hypot(yy - cy, xx - cx) - d_mm / 2 / px_mm) * brain
    level = rng.uniform(0.25, 0.45) if rng.random() < 0.6 else rng.uniform(1.15, 1.35)
    return _blend(x, weight, level * wm_level * _texture(rng, x.shape)), d_mm, x


_DRAW = {"tumour": _tumour, "ms": _ms, "infarct": _infarct, "small": _small}


def white_matter_level(x: np.ndarray, wm: np.ndarray, brain: np.ndarray) -> float:
    """The slice's typical white-matter intensity (lesion contrasts are relative to it)."""
    core = brain & (wm > 0.9)
    values = x[core] if core.sum() >= 20 else x[brain & (x >= np.quantile(x[brain], 0.7))]
    return float(np.median(values))


def draw(kind: str, x: np.ndarray, gm: np.ndarray, wm: np.ndarray, brain: np.ndarray, px_mm: float,
         rng: np.random.Generator) -> tuple[np.ndarray, Lesion]:
    """Draws one lesion of ``kind`` into the noise-free slice ``x`` ([S, S] float in [0, 1]) with its grey and
    white matter probabilities ``gm``, ``wm`` and brain mask ``brain``; ``px_mm`` is the pixel size.

    Returns:
        (the lesioned slice, :class:`Lesion`), the mask exactly the pixels where the lesioned slice differs from
        ``Lesion.anatomy`` by more than ``TOLERANCE`` (a lesion that would change fewer than 3 pixels is drawn
        again elsewhere, up to 8 times).
    Raises:
        ValueError: an unknown kind, or a slice without brain.
    """
    if kind not in _DRAW:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {', '.join(KINDS)}")
    if brain.sum() < 50:
        raise ValueError(f"the slice holds {int(brain.sum())} brain pixels; a lesion needs at least 50")
    edge_mm = ndimage.distance_transform_edt(brain) * px_mm
    level = white_matter_level(x, wm, brain)
    for _ in range(8):  # a lesion drawn where the tissue already looks like it changes too little: draw again
        out, size_mm, anatomy = _DRAW[kind](x.astype(np.float64), gm, wm, brain, edge_mm, px_mm, rng, level)
        out, anatomy = np.clip(out, 0.0, 1.0).astype(x.dtype), np.clip(anatomy, 0.0, 1.0).astype(x.dtype)
        mask = np.abs(out.astype(np.float64) - anatomy) > TOLERANCE
        if mask.sum() >= 3:
            break
    return out, Lesion(kind, size_mm, mask, anatomy)
