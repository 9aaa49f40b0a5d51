"""The outputs a person reads after a screen: heatmap overlays of the top-ranked images and the HTML report."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import torch

from ..data import fit_to_size, image_key, read_images, to_uint8
from ..data.io import suffix
from ..models import SAGAN, PatchGAN
from ..models.files import error_map
from ..ops import to_unit
from .records import Manifest, WriteError

SCORES = "scores.csv"
ERRORS = "errors.csv"
REPORT = "report.html"
HEATMAPS = "heatmaps"


def write_report(model: PatchGAN | SAGAN, out: Path, rows: list[dict], errors: list[dict], top: int, resize: str,
                 dev: torch.device, manifest: Manifest) -> None:
    """Heatmaps of the ``top`` first of the ranked ``rows`` and ``report.html`` in ``out`` (each recorded in
    the ``manifest`` before it is written)."""
    heat = _heatmaps(model, rows[:top], out, resize, dev, manifest)
    _report(out, rows, errors, heat, model)


def safe_name(rank: int, path: str, slice_: str) -> str:
    """A heatmap file name that cannot leave its folder: rank, then the file name reduced to [A-Za-z0-9._-]."""
    name = Path(path).name
    name = name[: len(name) - len(suffix(path))] if suffix(path) else name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "image"
    return f"{rank:04d}-{stem}{'-' + re.sub(r'[^0-9]', '', slice_) if slice_ else ''}.png"


def _heatmaps(model: PatchGAN | SAGAN, rows: list[dict], out: Path, resize: str, dev: torch.device,
              manifest: Manifest) -> list[str]:
    """Overlays of the error map (:func:`~patchgan_fast.error_maps`) on the top-ranked images (re-read
    and re-scored); "" for an image that cannot be read now."""
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
        base = to_unit(pixels).mean(0).numpy()
        rgb = np.stack([base] * 3, -1)
        alpha = 0.6 * heat[..., None]
        red = np.array([1.0, 0.15, 0.0], dtype=np.float32)
        overlay = (1 - alpha) * rgb + alpha * red
        name = safe_name(i, r["path"], r["slice"])
        try:
            PILImage.fromarray((np.clip(overlay, 0, 1) * 255).astype(np.uint8)).resize(
                (max(256, size), max(256, size)), PILImage.NEAREST).save(folder / name)
        except OSError as exc:
            raise WriteError(exc.errno, f"cannot write {folder / name}: {exc.strerror or exc} (a full disk?)") from exc
        names.append(name)
    return names


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


def _report(out: Path, rows: list[dict], errors: list[dict], heat: list[str], model: PatchGAN | SAGAN) -> None:
    e = html.escape
    scores = [float(r["score"]) for r in rows if math.isfinite(float(r["score"]))]
    items = []
    for i, (r, name) in enumerate(zip(rows, heat), 1):
        img = f'<img src="{HEATMAPS}/{e(name)}" width="256" alt="heatmap {i}">' if name else "(unreadable now)"
        items.append(f"<tr><td>{i}</td><td>{img}</td><td><code>{e(r['path'])}</code></td><td>{e(r['slice'])}</td>"
                     f"<td>{float(r['score']):.5g}</td><td>({e(str(r['top_y']))}, {e(str(r['top_x']))})</td></tr>")
    err_items = "".join(f"<li><code>{e(x['path'])}</code>: {e(x['error'])}</li>" for x in errors)
    stats = model.score_stats
    ref = (f"<p>Normal validation scores: median {stats['p50']:.4g}, 95th percentile {stats['p95']:.4g}, "
           f"99th {stats['p99']:.4g}.</p>") if stats else ""
    if isinstance(model, SAGAN):
        ref += ("<p>Model: SAGAN; score: the mean of |x - G(x)| / 2, the change its generator makes to restore a "
                "normal-looking image.</p>")
    elif model.feature_bank is not None:
        ref += (f"<p>Score: the ranked patch score (eq. 5) plus the mean distance of the image's "
                f"{e(model.config.neighbours)} features to those of its {model.config.neighbour_k} nearest normal "
                f"training images, each in units of the normal validation images'.</p>")
    what_map = "|x - G(x)|" if isinstance(model, SAGAN) else "the reconstruction error of the masked copies"
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>patchgan_fast screening report</title>
<style>body{{font-family:sans-serif;margin:2em}}td{{padding:4px 8px;vertical-align:middle}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>Screening report</h1>
<p>{len(rows)} images scored, {len(errors)} unreadable files. Ranked list: <a href="{SCORES}">{SCORES}</a>;
errors: <a href="{ERRORS}">{ERRORS}</a>.</p>{ref}
<h2>Score distribution</h2>{_histogram_svg(scores)}
<h2>Top {len(heat)} images</h2>
<p>Red: {what_map}, scaled to each image's largest value.</p>
<table><tr><th>rank</th><th>heatmap</th><th>file</th><th>slice</th><th>score</th><th>top patch (y, x)</th></tr>
{''.join(items)}</table>
<h2>Unreadable files</h2><ul>{err_items or '<li>none</li>'}</ul>
</body></html>
"""
    try:
        (out / REPORT).write_text(doc, encoding="utf-8")
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot write {out / REPORT}: {exc.strerror or exc} (a full disk?)") from exc
