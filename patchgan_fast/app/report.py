"""The outputs a person reads after a screen: heatmap overlays of the top-ranked images and the HTML report."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..data import fit_to_size, image_key, read_images, to_uint8
from ..data.io import suffix
from ..models import SAGAN, PatchGAN
from ..models.files import error_map, reconstruction
from ..ops import to_unit
from .records import Manifest, WriteError

SCORES = "scores.csv"
ERRORS = "errors.csv"
REPORT = "report.html"
HEATMAPS = "heatmaps"


def score_weights(model: PatchGAN) -> str:
    """The weights of a model with a feature bank, for the ``train`` command and the demo to print."""
    u, v = model.neighbour_weights
    return (f"eq. 5 x {u:g} + nearest-neighbour {model.config.neighbours} distance x {v:g}, each in units of the "
            "validation images' scores (the weights that best tell foreign patches pasted into them from them)")


def _weighing(model) -> str:
    """How a model with a feature bank sums its two scores, for the report."""
    u, v = model.neighbour_weights
    if (u, v) == (1.0, 1.0):  # a file written before the weights were chosen
        return "each in units of the normal validation images', summed"
    return (f"each in units of the normal validation images', weighted {u:g} and {v:g}: the weights that best tell "
            "foreign patches pasted into the normal validation images from the images themselves")


def write_report(model: PatchGAN | SAGAN, out: Path, rows: list[dict], errors: list[dict], top: int, resize: str,
                 dev: torch.device, manifest: Manifest, truth: Optional[Path] = None) -> None:
    """Panels of the ``top`` first of the ranked ``rows`` (input, reconstruction, error map and, where ``truth``
    holds a mask for the image, the ground truth) and ``report.html`` in ``out`` (each recorded in the
    ``manifest`` before it is written)."""
    heat = _heatmaps(model, rows[:top], out, resize, dev, manifest, truth)
    _report(out, rows, errors, heat, model, truth is not None)


TRUTH_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".npy", ".nii.gz", ".nii")


def truth_mask(truth: Optional[Path], path: str, size: int, resize: str) -> Optional[np.ndarray]:
    """The ground-truth mask of the image ``path`` in the folder ``truth``: the file of the same name, or of the
    same name with another image suffix; nonzero pixels are abnormal. None where there is none or it cannot be
    read."""
    if truth is None:
        return None
    name = Path(path).name
    stem = name[: len(name) - len(suffix(path))] if suffix(path) else name
    for candidate in [truth / name, *[truth / f"{stem}{s}" for s in TRUTH_SUFFIXES]]:
        if candidate.is_file():
            try:
                pixels, _ = fit_to_size(read_images(candidate)[0].pixels, size, 1, resize)
            except Exception:  # an unreadable mask: the report shows none
                return None
            return (to_unit(to_uint8(pixels))[0] > 0).numpy()
    return None


def safe_name(rank: int, path: str, slice_: str) -> str:
    """A heatmap file name that cannot leave its folder: rank, then the file name reduced to [A-Za-z0-9._-]."""
    name = Path(path).name
    name = name[: len(name) - len(suffix(path))] if suffix(path) else name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "image"
    return f"{rank:04d}-{stem}{'-' + re.sub(r'[^0-9]', '', slice_) if slice_ else ''}.png"


def _heatmaps(model: PatchGAN | SAGAN, rows: list[dict], out: Path, resize: str, dev: torch.device,
              manifest: Manifest, truth: Optional[Path] = None) -> list[str]:
    """One picture per top-ranked image (re-read and re-scored), its panels side by side: the input, the
    model's reconstruction (:func:`~patchgan_fast.models.files.reconstruction`), the error map
    (:func:`~patchgan_fast.error_maps`) over the input and, where ``truth`` has a mask for it, the ground truth over
    the input; "" for an image that cannot be read now."""
    from PIL import Image as PILImage

    folder = out / HEATMAPS
    manifest.add(f"{HEATMAPS}/", *[f"{HEATMAPS}/{safe_name(i, r['path'], r['slice'])}" for i, r in enumerate(rows, 1)])
    folder.mkdir(exist_ok=True)
    names = []
    size, channels = model.config.image_size, model.channels
    for i, r in enumerate(rows, 1):
        try:
            images = read_images(r["path"])
        except Exception:  # changed or gone since it was scored: the report says so
            names.append("")
            continue
        im = next((m for m in images if ("" if m.slice is None else str(m.slice)) == r["slice"]), images[0])
        pixels, _ = fit_to_size(im.pixels, size, channels, resize)
        pixels = to_uint8(pixels)  # as screened
        s = None if r["slice"] == "" else int(r["slice"])
        key = torch.tensor([image_key(r["path"], s)], device=dev)
        heat = error_map(model, pixels[None].to(dev), keys=key)[0].cpu()
        heat = (heat / max(float(heat.max()), 1e-12)).numpy()
        recon = reconstruction(model, pixels[None].to(dev), keys=key)[0].cpu()
        unit = to_unit(pixels)
        panels = [_rgb(unit), _rgb(recon), _overlay(unit, heat)]
        mask = truth_mask(truth, r["path"], size, resize) if s is None else None
        if mask is not None:
            panels.append(_overlay(unit, mask.astype(np.float32), colour=(0.1, 0.9, 0.2)))
        side = max(256, size)
        gap = np.ones((side, 4, 3), dtype=np.float32)
        picture = np.concatenate(sum([[_scaled(p, side), gap] for p in panels], [])[:-1], axis=1)
        name = safe_name(i, r["path"], r["slice"])
        try:
            PILImage.fromarray((np.clip(picture, 0, 1) * 255).astype(np.uint8)).save(folder / name)
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot write {folder / name}: {exc.strerror or exc} (a full disk?)") from exc
        names.append(name)
    return names


def _rgb(x) -> np.ndarray:
    """[C, H, W] in [0, 1] (1 or 3 channels; others averaged) as [H, W, 3]."""
    x = torch.as_tensor(x).float()
    x = x if x.shape[0] == 3 else x.mean(0, keepdim=True).expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy()


def _overlay(image, weight: np.ndarray, colour=(1.0, 0.15, 0.0)) -> np.ndarray:
    """``weight`` ([H, W] in [0, 1]) in ``colour`` over the grey image."""
    base = _rgb(torch.as_tensor(image).float().mean(0, keepdim=True))
    alpha = 0.6 * weight[..., None]
    return (1 - alpha) * base + alpha * np.array(colour, dtype=np.float32)


def _scaled(panel: np.ndarray, side: int) -> np.ndarray:
    reps = max(1, side // panel.shape[0])
    big = np.repeat(np.repeat(panel, reps, 0), reps, 1)
    out = np.ones((side, side, 3), dtype=np.float32)
    out[: min(side, big.shape[0]), : min(side, big.shape[1])] = big[:side, :side]
    return out


def _histogram_svg(scores: list[float], bins: int = 40, width: int = 640, height: int = 200) -> str:
    if not scores:
        return ""
    lo, hi = min(scores), max(scores)
    if hi <= lo:
        hi = lo + 1e-9
    counts = np.histogram(scores, bins=bins, range=(lo, hi))[0]
    top = max(int(counts.max()), 1)
    bw = width / bins
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{height - 20 - (c / top) * (height - 30):.1f}" width="{bw - 1:.1f}" '
        f'height="{(c / top) * (height - 30):.1f}" fill="#c0392b"><title>{c}</title></rect>'
        for i, c in enumerate(counts))
    return (f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{bars}'
            f'<text x="0" y="{height - 4}" font-size="12">{lo:.4g}</text>'
            f'<text x="{width}" y="{height - 4}" font-size="12" text-anchor="end">{hi:.4g}</text></svg>')


def flag_threshold(model: PatchGAN | SAGAN) -> Optional[float]:
    """The score above which an image is flagged: the 99th percentile of the model's normal validation scores
    (None for a model without them)."""
    stats = model.score_stats or {}
    return float(stats["p99"]) if "p99" in stats else None


def _report(out: Path, rows: list[dict], errors: list[dict], heat: list[str], model: PatchGAN | SAGAN,
            with_truth: bool = False) -> None:
    e = html.escape
    scores = [float(r["score"]) for r in rows if math.isfinite(float(r["score"]))]
    items = []
    for i, (r, name) in enumerate(zip(rows, heat), 1):
        img = f'<img src="{HEATMAPS}/{e(name)}" height="256" alt="image {i}">' if name else "(unreadable now)"
        flag = {"1": "<b>flagged</b>", "0": "no"}.get(r.get("flagged", ""), "-")
        items.append(f"<tr><td>{i}</td><td>{img}</td><td><code>{e(r['path'])}</code></td><td>{e(r['slice'])}</td>"
                     f"<td>{float(r['score']):.5g}</td><td>{flag}</td>"
                     f"<td>({e(str(r['top_y']))}, {e(str(r['top_x']))})</td></tr>")
    err_items = "".join(f"<li><code>{e(x['path'])}</code>: {e(x['error'])}</li>" for x in errors)
    stats = model.score_stats
    threshold = flag_threshold(model)
    flagged = sum(r.get("flagged") == "1" for r in rows)
    ref = (f"<p>Normal validation scores: median {stats['p50']:.4g}, 95th percentile {stats['p95']:.4g}, "
           f"99th {stats['p99']:.4g}.</p>") if stats else ""
    ref += (f"<p><b>{flagged} of {len(rows)} images flagged</b>: score above {threshold:.4g}, the 99th percentile of "
            "the normal validation images' scores (about 1 in 100 normal images is flagged too).</p>"
            if threshold is not None else "<p>This model has no normal validation scores, so no image is flagged.</p>")
    if isinstance(model, SAGAN):
        ref += ("<p>Model: SAGAN; score: the mean of |x - G(x)| / 2, the change its generator makes to restore a "
                "normal-looking image.</p>")
    elif model.feature_bank is not None and model.config.neighbours == "patches":
        n = model.patch_outline
        outline = ("the outline of the foreground left out" if n is None else
                   "nothing of the foreground's outline left out: the normal validation images' maxima do not crowd it"
                   if n == 0 else f"the foreground's outermost {n} pixel{'' if n == 1 else 's'} left out, where the "
                   "normal validation images' maxima crowd")
        ref += (f"<p>Score: the ranked patch score (eq. 5) plus the largest distance of a patch of the image to the "
                f"nearest patch near the same place in its {model.config.neighbour_k} most similar normal training "
                f"images ({outline}), {_weighing(model)}.</p>")
    elif model.feature_bank is not None:
        ref += (f"<p>Score: the ranked patch score (eq. 5) plus the mean distance of the image's "
                f"{e(model.config.neighbours)} features to those of its {model.config.neighbour_k} nearest normal "
                f"training images, {_weighing(model)}.</p>")
    what_map = "|x - G(x)|" if isinstance(model, SAGAN) else "the reconstruction error of the masked copies"
    if not isinstance(model, SAGAN) and model.feature_bank is not None and model.config.neighbours == "patches":
        what_map += " plus each patch's distance to the nearest normal patch"
        w = getattr(model, "map_window", 1)
        if w > 1:
            what_map += (f" (each pixel at least the mean over the {w} x {w} pixels around it, the window chosen on "
                         "the normal validation images)")
        what_map += ", each in its score units"
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>patchgan_fast screening report</title>
<style>body{{font-family:sans-serif;margin:2em}}td{{padding:4px 8px;vertical-align:middle}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>Screening report</h1>
<p>{len(rows)} images scored, {len(errors)} unreadable files. Ranked list: <a href="{SCORES}">{SCORES}</a>;
errors: <a href="{ERRORS}">{ERRORS}</a>.</p>{ref}
<h2>Score distribution</h2>{_histogram_svg(scores)}
<h2>Top {len(heat)} images</h2>
<p>Each picture: the input, the model's reconstruction, {what_map} in red over the input (scaled to its largest
value){", and the ground truth in green where the truth folder has a mask for the image" if with_truth else ""}.</p>
<table><tr><th>rank</th><th>input | reconstruction | error{" | truth" if with_truth else ""}</th><th>file</th><th>slice</th>
<th>score</th><th>flagged</th><th>top patch (y, x)</th></tr>
{''.join(items)}</table>
<h2>Unreadable files</h2><ul>{err_items or '<li>none</li>'}</ul>
</body></html>
"""
    try:
        (out / REPORT).write_text(doc, encoding="utf-8")
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot write {out / REPORT}: {exc.strerror or exc} (a full disk?)") from exc
