"""Screening collections of files: ranked scores, heatmaps, an HTML report, and resumable runs.

Scores are appended to ``scores.partial.csv`` after every batch (flushed and fsynced, each row with a
checksum), so an interrupted run keeps everything it finished and ``resume=True`` skips it; a row torn by
a crash or a full disk is dropped and its image scored again. When all files are done the rows are
ranked into ``scores.csv``. Unreadable files (and folders that could not be searched) go to
``errors.csv`` with the reason. The output folder's manifest (:mod:`.records`) records every file the
tool wrote and what produced the scores: ``force=True`` deletes only those files, ``resume=True``
refuses another model or other settings, and nothing inside the output folder is ever read as input.
Under ``torchrun`` every rank screens its own share of the files and rank 0 merges the outputs.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from ..data import DecodedFiles, image_key, list_images
from ..models import SAGAN, PatchGAN, load_model
from ..models.files import make_scorer
from ..runtime import __version__, distributed, local_cuda_device, progress_bar
from ..scoring import BatchQueue, Scorer
from .errors import UsageError
from .records import MANIFEST, Appender, Manifest, model_digest, printable, read_checked, write_checked, write_csv
from .report import ERRORS, HEATMAPS, REPORT, SCORES, flag_threshold, write_report

PARTIAL = "scores.partial.csv"
_FIELDS = ["path", "slice", "score", "top_y", "top_x", "prepared"]
_ERROR_FIELDS = ["path", "error"]
_OUTPUTS = (PARTIAL, SCORES, ERRORS, REPORT, HEATMAPS)
RESIZE_MODES = ("resize", "pad", "crop")


@dataclass
class ScreenSummary:
    """What a :func:`screen` did: images scored now, unreadable files found now, images skipped as already
    done, and unreadable files recorded by the earlier run that ``resume`` continued (not retried)."""

    scored: int
    errors: int
    skipped: int
    out: Path
    earlier_errors: int = 0


def screen(
    model: PatchGAN | SAGAN | Scorer | str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    resume: bool = False,
    force: bool = False,
    retry_errors: bool = False,
    batch_size: int = 64,
    num_workers: Optional[int] = None,
    top: int = 20,
    resize: str = "resize",
    device: Optional[str] = None,
    compile: str = "auto",
    progress: bool = True,
    truth: Optional[str | os.PathLike] = None,
) -> ScreenSummary:
    """Scores every image in ``inputs`` (files or folders) and writes the ranked outputs to ``out``.

    Files are decoded in ``num_workers`` processes while the device scores the previous batch
    (:class:`~patchgan_fast.scoring.BatchQueue`); images travel to the device as uint8 (see
    :func:`~patchgan_fast.data.to_uint8`). ``compile`` is the :class:`~patchgan_fast.Scorer`'s mode;
    ``'auto'`` captures CUDA graphs only for runs of at least 2,000 files, where the compile time
    pays for itself. ``model`` is a model, or a model file of any method (:func:`~patchgan_fast.load_model`);
    a SAGAN model scores with its generator (``compile`` does not apply). It may be a Scorer built from a
    PatchGAN, to reuse its compiled reconstructor across calls (``device`` and ``compile`` are then the
    Scorer's). With ``resume``, ``retry_errors`` scores the files that were unreadable before once more.

    ``scores.csv`` flags each image whose score is above the 99th percentile of the model's normal validation
    scores (column ``flagged``: 1 or 0; empty for a model without them), so a screen ends in a decision; the
    report shows each top image's input, reconstruction and error map side by side and, where the folder
    ``truth`` holds a mask of the same file name (any image suffix), the ground truth.

    Returns:
        counts of scored images, unreadable files and images skipped as already done.

    Raises:
        UsageError: before anything is read or written: bad options, a missing input, an unreadable model,
            ``out`` a file, ``out`` not empty without ``resume`` or ``force``, files there that the tool did
            not write, or (``resume``) scores there that another model or other settings produced.
        records.WriteError: an output could not be written (a full disk); what was written stays valid.
        TypeError: ``model`` is a Scorer built from something other than a PatchGAN.
    """
    world, rank = distributed()
    try:
        _check_options(batch_size, top, resize, num_workers, resume, retry_errors)
        model, scorer, dev = _open_model(model, device, world)
        for p in inputs:
            if not Path(p).exists():
                raise FileNotFoundError(f"input {str(p)!r} does not exist")
        if truth is not None and not Path(truth).is_dir():
            raise NotADirectoryError(f"the truth folder {str(truth)!r} is not a folder")
        out = Path(out)
        precision = scorer.dtype if scorer is not None else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        produced_by = {"model": model_digest(model), "resize": resize, "precision": str(precision),
                       "package_version": __version__}
        manifest = _prepare_out(out, resume, force, retry_errors, produced_by, world) if rank == 0 else None
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as exc:
        raise UsageError(str(exc)) from exc
    if world > 1:
        dist.barrier()
    problems: list[tuple[str, str]] = []
    files = sorted({f for p in inputs for f in list_images(p, problems)})
    files = [f for f in files if not _inside(f, out)]  # never our own outputs
    done, earlier, mine, todo = _share(out, files, rank, world)
    if scorer is None:
        if compile == "auto":
            compile = "cudagraphs" if dev.type == "cuda" and len(todo) >= 2000 else "none"
        scorer = make_scorer(model, dev, compile)
    size, channels = model.config.image_size, model.channels
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(DecodedFiles(todo, size, channels, resize), batch_size=None, num_workers=workers)
    run = _Run(BatchQueue(scorer, batch_size, (channels, size, size)), out, world, rank, batch_size, model.config.patch_size,
               size)
    run.skipped = len(mine) - len(todo)
    bar = progress_bar(len(todo), "screening", "file", enabled=progress and rank == 0)
    try:
        if rank == 0:
            run.problems(problems)
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
        _finish(model, out, top, resize, dev, manifest, None if truth is None else Path(truth))
    if world > 1:
        dist.barrier()
    return ScreenSummary(scored=run.scored, errors=run.errors, skipped=run.skipped, out=out,
                         earlier_errors=len(earlier))


def _check_options(batch_size, top, resize, num_workers, resume: bool, retry_errors: bool) -> None:
    for name, value, least in (("batch_size", batch_size, 1), ("top", top, 0), ("num_workers", num_workers, 0)):
        if name == "num_workers" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"expected {name} an int >= {least}, got {value!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize!r}; expected one of {', '.join(RESIZE_MODES)}")
    if retry_errors and not resume:
        raise ValueError("retry_errors (--retry-errors) goes with resume (--resume): a new run reads every file anyway")


def _open_model(model, device: Optional[str], world: int) -> tuple[PatchGAN | SAGAN, Optional[Scorer], torch.device]:
    """(a private copy of the model on the device, the caller's Scorer or None, the device)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and world > 1:
        dev = local_cuda_device()
    scorer = None
    if isinstance(model, Scorer):
        scorer, model, dev = model, model.source, model.device
        if not isinstance(model, PatchGAN):
            raise TypeError(f"screen needs a Scorer built from a PatchGAN, got one built from {type(model).__name__}")
    if isinstance(model, (PatchGAN, SAGAN)):
        model = copy.deepcopy(model)  # the caller's model keeps its device and mode
    else:
        model = load_model(model)
    return model.to(dev).eval(), scorer, dev


def _prepare_out(out: Path, resume: bool, force: bool, retry_errors: bool, produced_by: dict, world: int) -> Manifest:
    """Makes ``out`` ready (rank 0) and returns its manifest; refuses, naming why, when it cannot be used
    without losing or mixing anything."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; expected a folder (new or from an earlier screen)")
    manifest = Manifest.read(out) if out.is_dir() else None
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if resume and entries:
        if manifest is None:
            raise FileExistsError(f"cannot resume in {str(out)!r}: it has no {MANIFEST}, so this version of patchgan-fast "
                                  "did not write it; start a new --out")
        diff = manifest.differences(produced_by)
        if diff:
            raise ValueError(f"cannot resume in {str(out)!r}: its scores were produced by another model or with other "
                             f"settings: {', '.join(diff)}; resume with the same ones, or start a new --out")
        if retry_errors:  # the files that failed are read again (the folders searched again)
            write_checked(out / ERRORS, _ERROR_FIELDS, [])
            for p in out.glob("errors.rank*.csv"):
                p.unlink()
        return manifest
    if entries and not resume and not force:
        raise FileExistsError(f"output folder {str(out)!r} exists and is not empty; pass --resume to continue it or "
                              "--force to replace the outputs of an earlier screen")
    if force and manifest is not None:  # only what the tool wrote, as its manifest says
        for rel in sorted(manifest.written, reverse=True):
            p = out / rel
            if p.is_file() or p.is_symlink():
                p.unlink()
        if (out / HEATMAPS).is_dir() and not any((out / HEATMAPS).iterdir()) and f"{HEATMAPS}/" in manifest.written:
            (out / HEATMAPS).rmdir()
        (out / MANIFEST).unlink()
    clash = [name for name in _OUTPUTS if (out / name).exists()]
    if clash:
        raise FileExistsError(f"{str(out)!r} holds {', '.join(clash)}, which patchgan-fast did not write there (its "
                              f"{MANIFEST} does not list them); it never replaces files it did not write: choose "
                              "another --out")
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out, {"written": [], "produced_by": produced_by})
    ranks = range(world) if world > 1 else ()
    manifest.add(PARTIAL, SCORES, ERRORS, REPORT, *[f"scores.rank{r}.partial.csv" for r in ranks],
                 *[f"errors.rank{r}.csv" for r in ranks])
    return manifest


def _inside(path: str, folder: Path) -> bool:
    return folder.resolve() in Path(path).resolve().parents


def _share(out: Path, files: list[str], rank: int, world: int) -> tuple[set, set, list[str], list[str]]:
    """What this rank does: (the (path, slice) rows already scored by any rank, the files that failed before,
    this rank's files that did not fail before, those of them still to decode: a single-image file already
    scored is not decoded again)."""
    done = {(r["path"], r["slice"]) for p in [out / PARTIAL, *out.glob("scores.rank*.partial.csv")]
            for r in read_checked(p)}
    failed = {r["path"] for r in _read_errors(out)}
    mine = [f for f in files[rank::world] if f not in failed]
    single_done = {path for path, sl in done if sl == ""}
    return done, {f for f in files if f in failed}, mine, [f for f in mine if f not in single_done]


class _Run:
    """One rank's screening loop: batches the decoded images, submits them to the queue, and appends each
    finished batch's rows (and every unreadable file) to this rank's CSV files."""

    def __init__(self, queue: BatchQueue, out: Path, world: int, rank: int, batch_size: int, patch_size: int,
                 size: int):
        self.queue, self.batch_size, self.patch_size, self.grid_w = queue, batch_size, patch_size, size // patch_size
        self.scores_out = Appender(out / (PARTIAL if world == 1 else f"scores.rank{rank}.partial.csv"), _FIELDS)
        self.errors_out = Appender(out / (ERRORS if world == 1 else f"errors.rank{rank}.csv"), _ERROR_FIELDS)
        self.pending: list[tuple[str, Optional[int], torch.Tensor, str]] = []
        self.scored = self.skipped = self.errors = 0
        self.out = out

    def problems(self, problems: list[tuple[str, str]]) -> None:
        """Folders that could not be searched: to errors.csv (once) and the terminal."""
        recorded = {(r["path"], r["error"]) for r in _read_errors(self.out)}
        for path, why in problems:
            print(f"warning: {printable(path)}: {printable(why)}", file=sys.stderr)
            if (path, why) not in recorded:
                self.errors_out.write([{"path": path, "error": why}])
                self.errors += 1

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
            if "skipped" in how and s in (None, 0):  # what a reader left out (a 4-D volume's others), said once
                print(f"warning: {printable(path)}: {printable(how)}", file=sys.stderr)
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


def _read_errors(out: Path) -> list[dict]:
    return [r for p in [out / ERRORS, *sorted(out.glob("errors.rank*.csv"))] for r in read_checked(p)]


def _finish(model: PatchGAN | SAGAN, out: Path, top: int, resize: str, dev: torch.device, manifest: Manifest,
            truth: Optional[Path] = None) -> None:
    """Merges the partial files, ranks them into scores.csv, and writes heatmaps and the report."""
    rank_files = sorted(out.glob("scores.rank*.partial.csv"))
    rows = read_checked(out / PARTIAL) + [r for p in rank_files for r in read_checked(p)]
    seen, unique = set(), []
    for r in rows:
        if (r["path"], r["slice"]) not in seen:
            seen.add((r["path"], r["slice"]))
            unique.append(r)
    unique.sort(key=lambda r: (-float(r["score"]), r["path"], r["slice"]))
    threshold = flag_threshold(model)
    ranked = [{"rank": i, **r, "flagged": "" if threshold is None else str(int(float(r["score"]) > threshold))}
              for i, r in enumerate(unique, 1)]
    write_csv(out / SCORES, ["rank", *_FIELDS[:3], "flagged", *_FIELDS[3:]], ranked)
    if rank_files:  # merge the per-rank partial and error files into the single-process layout
        write_checked(out / PARTIAL, _FIELDS, unique)
        for p in rank_files:
            p.unlink()
        write_checked(out / ERRORS, _ERROR_FIELDS, _read_errors(out))
        for p in out.glob("errors.rank*.csv"):
            p.unlink()
    write_report(model, out, ranked, _read_errors(out), top, resize, dev, manifest, truth)
