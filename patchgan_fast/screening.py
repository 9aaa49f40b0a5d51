"""Screening collections of files: ranked scores, heatmaps, an HTML report, and resumable runs.

Scores are appended to ``scores.partial.csv`` after every batch (flushed and fsynced), so an
interrupted run keeps everything it finished and ``resume=True`` skips it; when all files are done
the rows are ranked into ``scores.csv``. Unreadable files go to ``errors.csv`` with the reason.
Under ``torchrun`` every rank screens its own share of the files and rank 0 merges the outputs.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import html
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ._runtime import distributed, local_cuda_device, progress_bar
from .io import ReadError, fit_to_size, list_images, read_images, suffix, to_uint8
from .model import PatchGAN
from .pipeline import BatchQueue, Scorer
from .scoring import error_maps

PARTIAL = "scores.partial.csv"
SCORES = "scores.csv"
ERRORS = "errors.csv"
REPORT = "report.html"
HEATMAPS = "heatmaps"
_FIELDS = ["path", "slice", "score", "top_y", "top_x", "prepared"]
_OUTPUTS = (PARTIAL, SCORES, ERRORS, REPORT, HEATMAPS)


@dataclass
class ScreenSummary:
    scored: int
    errors: int
    skipped: int
    out: Path


def image_key(path: str, slice_: Optional[int]) -> int:
    """Stable int64 mask key of an image: a hash of its path and slice, never its batch position."""
    digest = hashlib.blake2b(f"{path}#{'' if slice_ is None else slice_}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class _Files(torch.utils.data.Dataset):
    """Decodes one file per item (in DataLoader workers): its images fitted to the model's size as
    uint8, or the error."""

    def __init__(self, files: Sequence[str], size: int, channels: int, resize: str):
        self.files, self.size, self.channels, self.resize = list(files), size, channels, resize

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        try:
            out = []
            for im in read_images(path):
                pixels, how = fit_to_size(im.pixels, self.size, self.channels, self.resize)
                out.append((im.slice, to_uint8(pixels), "; ".join([*im.notes, how] if how else im.notes)))
            return path, out, None
        except (ReadError, ValueError, OSError) as exc:
            return path, None, str(exc)


def _prepare_out(out: Path, resume: bool, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (resume or force):
        raise FileExistsError(f"output folder {str(out)!r} exists and is not empty; pass --resume to continue it or --force to overwrite")
    if force and not resume:
        for name in _OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for p in out.glob("scores.rank*.partial.csv"):
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("score") not in (None, "")]


class _Appender:
    """Appends CSV rows durably (flush + fsync per batch), writing the header once."""

    def __init__(self, path: Path, fields: list[str]):
        new = not path.exists() or path.stat().st_size == 0
        self.f = open(path, "a", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=fields)
        if new:
            self.w.writeheader()

    def write(self, rows: list[dict]) -> None:
        self.w.writerows(rows)
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self):
        self.f.close()


def screen(
    model: PatchGAN | Scorer | str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    resume: bool = False,
    force: bool = False,
    batch_size: int = 64,
    num_workers: Optional[int] = None,
    top: int = 20,
    resize: str = "resize",
    device: Optional[str] = None,
    compile: str = "auto",
    progress: bool = True,
) -> ScreenSummary:
    """Scores every image in ``inputs`` (files or folders) and writes the ranked outputs to ``out``.

    Files are decoded in ``num_workers`` processes while the device scores the previous batch
    (:class:`~patchgan_fast.pipeline.BatchQueue`); images travel to the device as uint8 (see
    :func:`~patchgan_fast.io.to_uint8`). ``compile`` is the :class:`~patchgan_fast.Scorer`'s mode;
    ``'auto'`` captures CUDA graphs only for runs of at least 2,000 files, where the compile time
    pays for itself. ``model`` may be a Scorer built from a PatchGAN, to reuse its compiled
    reconstructor across calls (``device`` and ``compile`` are then the Scorer's).

    Returns:
        counts of scored images, unreadable files and images skipped as already done.

    Raises:
        FileExistsError: ``out`` holds files and neither ``resume`` nor ``force`` is set.
    """
    world, rank = distributed()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and world > 1:
        dev = local_cuda_device()
    scorer = None
    if isinstance(model, Scorer):
        scorer, model, dev = model, model.source, model.device
        if not isinstance(model, PatchGAN):
            raise TypeError(f"screen needs a Scorer built from a PatchGAN, got one built from {type(model).__name__}")
    if isinstance(model, PatchGAN):
        model = copy.deepcopy(model)  # the caller's model keeps its device and mode
    else:
        model = PatchGAN.load(model)
    model = model.to(dev).eval()
    out = Path(out)
    if rank == 0:
        _prepare_out(out, resume, force)
    if world > 1:
        dist.barrier()
    files = sorted({f for p in inputs for f in list_images(p)})
    partial = out / (PARTIAL if world == 1 else f"scores.rank{rank}.partial.csv")
    done = {(r["path"], r["slice"]) for p in [out / PARTIAL, *out.glob("scores.rank*.partial.csv")] for r in _read_rows(p)}
    error_rows = _read_rows_errors(out / ERRORS)
    failed = {r["path"] for r in error_rows}
    mine = [f for f in files[rank::world] if f not in failed]
    single_done = {path for path, sl in done if sl == ""}  # single-image files already scored: not decoded again
    todo = [f for f in mine if f not in single_done]
    size, channels = model.config.image_size, model.channels
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(_Files(todo, size, channels, resize), batch_size=None, num_workers=workers)
    scores_out = _Appender(partial, _FIELDS)
    errors_out = _Appender(out / (ERRORS if world == 1 else f"errors.rank{rank}.csv"), ["path", "error"])
    scored, skipped, n_err = 0, len(mine) - len(todo), 0
    pending: list[tuple[str, Optional[int], torch.Tensor, str]] = []
    bar = progress_bar(len(todo), "screening", "file", enabled=progress and rank == 0)
    p = model.config.patch_size
    gw = size // p
    if compile == "auto":
        compile = "cudagraphs" if dev.type == "cuda" and len(todo) >= 2000 else "none"
    if scorer is None:
        scorer = Scorer(model, device=dev, compile=compile)
    queue = BatchQueue(scorer, batch_size, (channels, size, size))

    def write(done_batch):
        nonlocal scored
        if done_batch is None:
            return
        batch, scores, top_idx = done_batch
        rows = [{"path": a, "slice": "" if s is None else s, "score": f"{float(v):.9g}",
                 "top_y": int(i // gw) * p, "top_x": int(i % gw) * p, "prepared": how}
                for (a, s, _, how), v, i in zip(batch, scores, top_idx)]
        scores_out.write(rows)
        scored += len(rows)

    def flush():
        if pending:
            keys = [image_key(a, s) for a, s, _, _ in pending]
            write(queue.submit([t for _, _, t, _ in pending], keys, list(pending)))
            pending.clear()

    try:
        for path, images, error in loader:
            if error is not None:
                errors_out.write([{"path": path, "error": error}])
                n_err += 1
            else:
                for s, pixels, how in images:
                    if (path, "" if s is None else str(s)) in done:
                        skipped += 1
                        continue
                    pending.append((path, s, pixels, how))
                    if len(pending) >= batch_size:
                        flush()
            if bar is not None:
                bar.update(1)
        flush()
        write(queue.flush())
    except KeyboardInterrupt:
        write(queue.flush())  # that batch is scored already: keep it
        raise
    finally:
        scores_out.close()
        errors_out.close()
        if bar is not None:
            bar.close()
    if world > 1:
        dist.barrier()
    if rank == 0:
        _finish(model, out, top, resize, dev)
    if world > 1:
        dist.barrier()
    return ScreenSummary(scored=scored, errors=n_err, skipped=skipped, out=out)


def _read_rows_errors(path: Path) -> list[dict]:
    rows = []
    for p in [path, *path.parent.glob("errors.rank*.csv")]:
        if p.exists():
            with open(p, newline="") as f:
                rows += list(csv.DictReader(f))
    return rows


def _finish(model: PatchGAN, out: Path, top: int, resize: str, dev: torch.device) -> None:
    """Merges the partial files, ranks them into scores.csv, and writes heatmaps and the report."""
    rank_files = sorted(out.glob("scores.rank*.partial.csv"))
    rows = _read_rows(out / PARTIAL) + [r for p in rank_files for r in _read_rows(p)]
    seen, unique = set(), []
    for r in rows:
        if (r["path"], r["slice"]) not in seen:
            seen.add((r["path"], r["slice"]))
            unique.append(r)
    unique.sort(key=lambda r: (-float(r["score"]), r["path"], r["slice"]))
    tmp = out / (SCORES + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["rank", *_FIELDS])
        w.writeheader()
        for i, r in enumerate(unique, 1):
            w.writerow({"rank": i, **{k: r[k] for k in _FIELDS}})
    os.replace(tmp, out / SCORES)
    if rank_files:  # merge the per-rank partial and error files into the single-process layout
        _rewrite(out / PARTIAL, _FIELDS, unique)
        for p in rank_files:
            p.unlink()
        errors = _read_rows_errors(out / ERRORS)
        _rewrite(out / ERRORS, ["path", "error"], errors)
        for p in out.glob("errors.rank*.csv"):
            p.unlink()
    errors = _read_rows_errors(out / ERRORS)
    heat = _heatmaps(model, unique[:top], out, resize, dev)
    _report(out, unique, errors, heat, model)


def _rewrite(path: Path, fields: list[str], rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def safe_name(rank: int, path: str, slice_: str) -> str:
    """A heatmap file name that cannot leave its folder: rank, then the file name reduced to [A-Za-z0-9._-]."""
    name = Path(path).name
    name = name[: len(name) - len(suffix(path))] if suffix(path) else name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "image"
    return f"{rank:04d}-{stem}{'-' + re.sub(r'[^0-9]', '', slice_) if slice_ else ''}.png"


def _heatmaps(model: PatchGAN, rows: list[dict], out: Path, resize: str, dev: torch.device) -> list[str]:
    """Overlays of the error map (:func:`~patchgan_fast.error_maps`) on the top-ranked images (re-read
    and re-scored)."""
    from PIL import Image as PILImage

    folder = out / HEATMAPS
    folder.mkdir(exist_ok=True)
    names = []
    size, channels = model.config.image_size, model.channels
    for i, r in enumerate(rows, 1):
        try:
            images = read_images(r["path"])
        except ReadError:
            names.append("")
            continue
        im = next((m for m in images if ("" if m.slice is None else str(m.slice)) == r["slice"]), images[0])
        pixels, _ = fit_to_size(im.pixels, size, channels, resize)
        pixels = to_uint8(pixels)  # as screened
        s = None if r["slice"] == "" else int(r["slice"])
        key = torch.tensor([image_key(r["path"], s)], device=dev)
        heat = error_maps(model, pixels[None].to(dev), keys=key)[0].cpu()
        heat = (heat / max(float(heat.max()), 1e-12)).numpy()
        base = (pixels.float() / 255).mean(0).numpy()
        rgb = np.stack([base] * 3, -1)
        alpha = 0.6 * heat[..., None]
        red = np.array([1.0, 0.15, 0.0], dtype=np.float32)
        overlay = (1 - alpha) * rgb + alpha * red
        name = safe_name(i, r["path"], r["slice"])
        PILImage.fromarray((np.clip(overlay, 0, 1) * 255).astype(np.uint8)).resize(
            (max(256, size), max(256, size)), PILImage.NEAREST).save(folder / name)
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


def _report(out: Path, rows: list[dict], errors: list[dict], heat: list[str], model: PatchGAN) -> None:
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
    if model.feature_bank is not None:
        ref += (f"<p>Score: the ranked patch score (eq. 5) plus the mean distance of the image's "
                f"{e(model.config.neighbours)} features to those of its {model.config.neighbour_k} nearest normal "
                f"training images, each in units of the normal validation images'.</p>")
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>patchgan_fast screening report</title>
<style>body{{font-family:sans-serif;margin:2em}}td{{padding:4px 8px;vertical-align:middle}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>Screening report</h1>
<p>{len(rows)} images scored, {len(errors)} unreadable files. Ranked list: <a href="{SCORES}">{SCORES}</a>;
errors: <a href="{ERRORS}">{ERRORS}</a>.</p>{ref}
<h2>Score distribution</h2>{_histogram_svg(scores)}
<h2>Top {len(heat)} images</h2>
<p>Red: patch reconstruction error (eq. 2), scaled to each image's largest patch.</p>
<table><tr><th>rank</th><th>heatmap</th><th>file</th><th>slice</th><th>score</th><th>top patch (y, x)</th></tr>
{''.join(items)}</table>
<h2>Unreadable files</h2><ul>{err_items or '<li>none</li>'}</ul>
</body></html>
"""
    (out / REPORT).write_text(doc, encoding="utf-8")
