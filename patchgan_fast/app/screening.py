"""Screening collections of files: ranked scores, heatmaps, an HTML report, and resumable runs.

Scores are appended to ``scores.partial.csv`` after every batch (flushed and fsynced), so an
interrupted run keeps everything it finished and ``resume=True`` skips it; when all files are done
the rows are ranked into ``scores.csv``. Unreadable files go to ``errors.csv`` with the reason.
Under ``torchrun`` every rank screens its own share of the files and rank 0 merges the outputs.
"""

from __future__ import annotations

import copy
import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from ..data import DecodedFiles, image_key, list_images
from ..models import PatchGAN
from ..runtime import distributed, local_cuda_device, progress_bar
from ..scoring import BatchQueue, Scorer
from .report import ERRORS, HEATMAPS, REPORT, SCORES, write_report

PARTIAL = "scores.partial.csv"
_FIELDS = ["path", "slice", "score", "top_y", "top_x", "prepared"]
_OUTPUTS = (PARTIAL, SCORES, ERRORS, REPORT, HEATMAPS)


@dataclass
class ScreenSummary:
    scored: int
    errors: int
    skipped: int
    out: Path


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
    (:class:`~patchgan_fast.scoring.BatchQueue`); images travel to the device as uint8 (see
    :func:`~patchgan_fast.data.to_uint8`). ``compile`` is the :class:`~patchgan_fast.Scorer`'s mode;
    ``'auto'`` captures CUDA graphs only for runs of at least 2,000 files, where the compile time
    pays for itself. ``model`` may be a Scorer built from a PatchGAN, to reuse its compiled
    reconstructor across calls (``device`` and ``compile`` are then the Scorer's).

    Returns:
        counts of scored images, unreadable files and images skipped as already done.

    Raises:
        FileExistsError: ``out`` holds files and neither ``resume`` nor ``force`` is set.
    """
    world, rank = distributed()
    model, scorer, dev = _open_model(model, device, world)
    out = Path(out)
    if rank == 0:
        _prepare_out(out, resume, force)
    if world > 1:
        dist.barrier()
    files = sorted({f for p in inputs for f in list_images(p)})
    done, mine, todo = _share(out, files, rank, world)
    if scorer is None:
        if compile == "auto":
            compile = "cudagraphs" if dev.type == "cuda" and len(todo) >= 2000 else "none"
        scorer = Scorer(model, device=dev, compile=compile)
    size, channels = model.config.image_size, model.channels
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(DecodedFiles(todo, size, channels, resize), batch_size=None, num_workers=workers)
    run = _Run(BatchQueue(scorer, batch_size, (channels, size, size)), out, world, rank, batch_size, model.config.patch_size,
               size)
    run.skipped = len(mine) - len(todo)
    bar = progress_bar(len(todo), "screening", "file", enabled=progress and rank == 0)
    try:
        for path, images, error in loader:
            run.add(path, images, error, done)
            if bar is not None:
                bar.update(1)
        run.flush()
        run.write(run.queue.flush())
    except KeyboardInterrupt:
        run.write(run.queue.flush())  # that batch is scored already: keep it
        raise
    finally:
        run.close()
        if bar is not None:
            bar.close()
    if world > 1:
        dist.barrier()
    if rank == 0:
        _finish(model, out, top, resize, dev)
    if world > 1:
        dist.barrier()
    return ScreenSummary(scored=run.scored, errors=run.errors, skipped=run.skipped, out=out)


def _open_model(model, device: Optional[str], world: int) -> tuple[PatchGAN, Optional[Scorer], torch.device]:
    """(a private copy of the model on the device, the caller's Scorer or None, the device)."""
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
    return model.to(dev).eval(), scorer, dev


def _share(out: Path, files: list[str], rank: int, world: int) -> tuple[set, list[str], list[str]]:
    """What this rank does: (the (path, slice) rows already scored by any rank, this rank's files that did not
    fail before, those of them still to decode: a single-image file already scored is not decoded again)."""
    done = {(r["path"], r["slice"]) for p in [out / PARTIAL, *out.glob("scores.rank*.partial.csv")] for r in _read_rows(p)}
    failed = {r["path"] for r in _read_rows_errors(out / ERRORS)}
    mine = [f for f in files[rank::world] if f not in failed]
    single_done = {path for path, sl in done if sl == ""}
    return done, mine, [f for f in mine if f not in single_done]


class _Run:
    """One rank's screening loop: batches the decoded images, submits them to the queue, and appends each
    finished batch's rows (and every unreadable file) to this rank's CSV files."""

    def __init__(self, queue: BatchQueue, out: Path, world: int, rank: int, batch_size: int, patch_size: int,
                 size: int):
        self.queue, self.batch_size, self.patch_size, self.grid_w = queue, batch_size, patch_size, size // patch_size
        self.scores_out = _Appender(out / (PARTIAL if world == 1 else f"scores.rank{rank}.partial.csv"), _FIELDS)
        self.errors_out = _Appender(out / (ERRORS if world == 1 else f"errors.rank{rank}.csv"), ["path", "error"])
        self.pending: list[tuple[str, Optional[int], torch.Tensor, str]] = []
        self.scored = self.skipped = self.errors = 0

    def add(self, path: str, images, error: Optional[str], done: set) -> None:
        """One decoded file: its images join the pending batch (those not done yet), or its error is written."""
        if error is not None:
            self.errors_out.write([{"path": path, "error": error}])
            self.errors += 1
            return
        for s, pixels, how in images:
            if (path, "" if s is None else str(s)) in done:
                self.skipped += 1
                continue
            self.pending.append((path, s, pixels, how))
            if len(self.pending) >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        """Submits the pending images; writes the rows of the batch submitted before them."""
        if self.pending:
            keys = [image_key(a, s) for a, s, _, _ in self.pending]
            self.write(self.queue.submit([t for _, _, t, _ in self.pending], keys, list(self.pending)))
            self.pending.clear()

    def write(self, done_batch) -> None:
        if done_batch is None:
            return
        batch, scores, top_idx = done_batch
        p, gw = self.patch_size, self.grid_w
        rows = [{"path": a, "slice": "" if s is None else s, "score": f"{float(v):.9g}",
                 "top_y": int(i // gw) * p, "top_x": int(i % gw) * p, "prepared": how}
                for (a, s, _, how), v, i in zip(batch, scores, top_idx)]
        self.scores_out.write(rows)
        self.scored += len(rows)

    def close(self) -> None:
        self.scores_out.close()
        self.errors_out.close()


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
    write_report(model, out, unique, errors, top, resize, dev)


def _rewrite(path: Path, fields: list[str], rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


