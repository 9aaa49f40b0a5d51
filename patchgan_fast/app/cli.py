"""The ``patchgan-fast`` command: train, screen, evaluate, demo."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from typing import Optional, Sequence


from ..runtime import __version__, interrupt
from ..scoring.neighbours import FEATURE_SPACES
from .errors import UsageError
from .files import check_inputs, load_collection, workers
from .records import WriteError, printable


_PATCHGAN_ONLY = ("patch_size", "loss", "ranking", "error", "layout", "num_copies", "depth", "neighbours", "neighbour_k",
                  "neighbour_bank", "unlabelled_weight")


def _train_config(a):
    """The run's config from the flags: a TrainConfig (``--method patchgan``) or a SAGANConfig."""
    from ..models import SAGANConfig, TrainConfig

    checkpoints = a.checkpoint_dir or f"{a.out}.checkpoints"  # an interrupted run can --resume
    if a.method == "sagan":
        given = [k for k in _PATCHGAN_ONLY if getattr(a, k) is not None] + [
            k for k in ("skips", "no_position_weights") if getattr(a, k)]
        if given:
            raise UsageError(f"--method sagan does not take {', '.join('--' + k.replace('_', '-') for k in given)} "
                             "(Patch-GAN options)")
        overrides = {k: getattr(a, k) for k in ("steps", "batch_size", "lr", "width", "seed", "device")
                     if getattr(a, k) is not None}
        return SAGANConfig(image_size=a.size, checkpoint_dir=checkpoints, **overrides)
    overrides = {k: getattr(a, k) for k in ("patch_size", "steps", "batch_size", "lr", "loss", "ranking", "error",
                                            "layout", "num_copies", "width", "depth", "seed", "device",
                                            "neighbours", "neighbour_k", "neighbour_bank", "unlabelled_weight")
                 if getattr(a, k) is not None}
    if a.skips:
        overrides["skips"] = True
    if a.no_position_weights:
        overrides["position_weights"] = False
    return TrainConfig.for_image_size(a.size, checkpoint_dir=checkpoints, **overrides)


def cmd_train(a) -> int:
    from ..models import train

    try:
        config = _train_config(a)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if os.path.isdir(a.out):
        raise UsageError(f"--out {a.out!r} is a folder; expected the model file to write (e.g. model.pgf)")
    if a.unlabelled:
        check_inputs(a.unlabelled)
    images, ids, errors = load_collection(a.data, a.size, a.channels, a.resize, workers(a.workers))
    print(f"training {a.method} on {len(images)} normal images ({len(errors)} unreadable files skipped), "
          f"{images.shape[1]}x{a.size}x{a.size}", file=sys.stderr)
    pool = None
    if a.unlabelled:
        pool, _, errors = load_collection(a.unlabelled, a.size, images.shape[1], a.resize, workers(a.workers))
        print(f"and an unlabelled pool of {len(pool)} images ({len(errors)} unreadable files skipped)", file=sys.stderr)
    groups = _groups(a.group_by, ids) if a.group_by is not None else None
    try:
        model = train(images, config, a.out, unlabelled=pool, groups=groups, resume=a.resume)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if getattr(model, "feature_bank", None) is not None:
        from .report import score_weights

        print(f"score: {score_weights(model)}", file=sys.stderr)
    print(f"model written to {printable(a.out)}")
    return 0


def _groups(pattern: str, ids) -> list[str]:
    """The subject of each training image: the first group (else the whole match) of ``pattern`` searched in its
    file's path.

    Raises:
        UsageError: an invalid pattern, or files it does not match (the first few named).
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"--group-by {pattern!r} is not a regular expression: {exc}") from exc
    found = [regex.search(str(path)) for path, _ in ids]
    missing = sorted({str(path) for (path, _), m in zip(ids, found) if m is None})
    if missing:
        raise UsageError(f"--group-by {pattern!r} matches no part of {len(missing)} file path(s), e.g. "
                         f"{', '.join(map(printable, missing[:3]))}; expected it in every training file's path")
    return [m.group(1) if m.groups() and m.group(1) is not None else m.group(0) for m in found]


def cmd_screen(a) -> int:
    from .screening import screen

    s = screen(a.model, a.data, a.out, resume=a.resume, force=a.force, retry_errors=a.retry_errors,
               batch_size=a.batch_size, num_workers=a.workers, top=a.top, resize=a.resize, device=a.device,
               compile=a.compile, truth=a.truth)
    total = s.scored + s.skipped
    earlier = (f" ({s.earlier_errors} more from the earlier run, not retried: --retry-errors reads them again)"
               if s.earlier_errors else "")
    print(f"scored {s.scored} images ({s.skipped} already done), {s.errors} unreadable files{earlier}; "
          f"ranked list {printable(s.out / 'scores.csv')}, report {printable(s.out / 'report.html')}")
    has_scores = (s.out / "scores.csv").exists() and sum(1 for _ in open(s.out / "scores.csv")) > 1
    return 0 if total or has_scores else 1


def cmd_evaluate(a) -> int:
    from .evaluate import evaluate

    return evaluate(a)


def cmd_benchmark(a) -> int:
    from ..evaluation.tables import main as benchmark_main

    return benchmark_main(a)


def cmd_demo(a) -> int:
    from .demo import run

    return run(a)


def _common_io(q, with_size: bool = True) -> None:
    """Options of every command that reads files."""
    if with_size:
        q.add_argument("--size", type=_POSITIVE, default=128, help="model image size in pixels (default 128)")
    q.add_argument("--resize", choices=["resize", "pad", "crop"], default="resize",
                   help="how images are brought to the model's size: resample (default), keep the aspect ratio "
                        "and pad, or centre-crop; what was done is recorded per image")
    q.add_argument("--workers", type=_NATURAL, default=None, help="decoding processes (default: CPU count, at most 8)")
    q.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def _train_parser(sub) -> None:
    """``patchgan-fast train``."""
    t = sub.add_parser("train", help="train a model on normal images", description=(
        "Train a Patch-GAN (or SAGAN) on a collection of NORMAL images (folders or files: PNG, JPEG, BMP, TIFF, NIfTI, "
        "DICOM, npy/npz), and on an --unlabelled pool when you have one, and write the model file. Sensible defaults "
        "follow the image size."))
    t.add_argument("data", nargs="+", help="files or folders of normal images")
    t.add_argument("--unlabelled", nargs="+", default=None, metavar="POOL",
                   help="files or folders of unlabelled images (normal and abnormal mixed, labels unknown): the "
                        "semi-supervised setting")
    t.add_argument("--method", choices=["patchgan", "sagan"], default="patchgan",
                   help="patchgan (default) or sagan (Zhang et al. 2024: learns from the unlabelled pool; 64x64 "
                        "grayscale in the paper, --size a multiple of 16)")
    t.add_argument("--unlabelled-weight", type=_non_negative_float, default=None,
                   help="patchgan with --unlabelled: weight of the adversarial term on the pool's reconstructions "
                        "(default 0.1)")
    t.add_argument("--out", required=True, help="model file to write (e.g. model.pgf)")
    t.add_argument("--channels", type=int, choices=[1, 3], default=None, help="1 or 3 (default: as the first image)")
    t.add_argument("--patch-size", type=_POSITIVE, default=None, help="scoring patch size (default size/8)")
    t.add_argument("--steps", type=_POSITIVE, default=None, help="optimizer steps (default 2000)")
    t.add_argument("--batch-size", type=_POSITIVE, default=None)
    t.add_argument("--lr", type=_positive_float, default=None)
    t.add_argument("--loss", choices=["default", "paper", "reconstruction"], default=None,
                   help="loss weights preset: paper = eq. 4 with lambda 0.2 (default: default)")
    t.add_argument("--ranking", choices=["paper", "none"], default=None, help="ranking preset used for scoring")
    t.add_argument("--error", choices=["mse", "msgms", "mse+msgms"], default=None,
                   help="patch error for scoring: mse (squared error, default), msgms (multi-scale gradient "
                        "magnitude similarity, structural) or mse+msgms (both, each scaled by the spread of "
                        "its normal validation scores)")
    t.add_argument("--layout", choices=["phases", "random", "none"], default=None, help="scoring masks layout")
    t.add_argument("--num-copies", type=_POSITIVE, default=None, help="K masked copies per image (square for phases)")
    t.add_argument("--width", type=_POSITIVE, default=None, help="reconstructor width")
    t.add_argument("--depth", type=_POSITIVE, default=None, help="reconstructor stride-2 stages")
    t.add_argument("--skips", action="store_true", help="U-Net skip connections in the reconstructor")
    t.add_argument("--no-position-weights", action="store_true",
                   help="rank raw patch errors, without weighting each position by its normal validation error")
    t.add_argument("--neighbours", choices=FEATURE_SPACES, default=None,
                   help="also score by the distance of an image's features (this network's, or both's) to those of its "
                        "nearest training images, or of each of its patches to the nearest patch near the same place in "
                        "the most similar training images (patches: for registered collections, e.g. brain MRI), "
                        "added to the patch score in units of the validation images' (default: off)")
    t.add_argument("--neighbour-k", type=_POSITIVE, default=None,
                   help="nearest training images per score (default 5; 40 with --neighbours patches)")
    t.add_argument("--neighbour-bank", type=_POSITIVE, default=None,
                   help="most training images whose features the model file keeps (default 1000)")
    t.add_argument("--group-by", default=None, metavar="REGEX",
                   help="hold out whole subjects for validation (and the flag threshold): a regular expression "
                        "whose first group, else whole match, in each file's path names its subject, e.g. "
                        "'(sub-[0-9]+)' (default: images at random, so the flag of a new subject's slices runs high)")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--checkpoint-dir", default=None, help="where resumable checkpoints go (default OUT.checkpoints/)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    _common_io(t)
    t.set_defaults(func=cmd_train)


def _screen_parser(sub) -> None:
    """``patchgan-fast screen``."""
    s = sub.add_parser("screen", help="rank a collection by anomaly score", description=(
        "Score every image in DATA with MODEL and write to --out: scores.csv (ranked: path, slice, score, flagged = "
        "above the 99th percentile of the model's normal validation scores, top patch), written as it goes so an "
        "interrupted run keeps its work; heatmaps/ for the top images (input, reconstruction, error map); report.html; "
        "errors.csv naming every unreadable file. Exit status is non-zero only when nothing could be scored."))
    s.add_argument("model", help="model file from `patchgan-fast train`")
    s.add_argument("data", nargs="+", help="files or folders to screen")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in --out, skipping what is done")
    s.add_argument("--force", action="store_true",
                   help="replace the outputs of an earlier screen in --out (only the files it wrote; never others)")
    s.add_argument("--retry-errors", action="store_true",
                   help="with --resume: read the files that were unreadable in the earlier run once more")
    s.add_argument("--top", type=_NATURAL, default=20, help="heatmaps and report entries for the N highest scores (default 20)")
    s.add_argument("--truth", default=None, metavar="DIR",
                   help="a folder of ground-truth masks named like the images (any image suffix; nonzero = abnormal): "
                        "the report shows them beside the error maps")
    s.add_argument("--batch-size", type=_POSITIVE, default=64)
    s.add_argument("--compile", choices=["auto", "none", "compile", "cudagraphs"], default="auto",
                   help="how the reconstructor runs: torch.compile with CUDA graphs on CUDA for runs of 2,000 files "
                        "or more, else eagerly (auto, the default); none; compile; cudagraphs (CUDA only)")
    _common_io(s, with_size=False)
    s.set_defaults(func=cmd_screen)


def _evaluate_parser(sub) -> None:
    """``patchgan-fast evaluate``."""
    e = sub.add_parser("evaluate", help="AUROC and plots on labelled data", description=(
        "Score normal and abnormal images and report the image AUROC and AUPRC, with a ROC curve (roc.png) and "
        "score distributions (scores.png) like the paper's Fig. 6 and Fig. 3."))
    e.add_argument("model")
    e.add_argument("--normal", nargs="+", help="files or folders of normal images")
    e.add_argument("--abnormal", nargs="+", help="files or folders of abnormal images")
    e.add_argument("--labels", help="CSV with columns path,label (1 = abnormal) instead of the two folders")
    e.add_argument("--masks", help="folder of ground-truth lesion masks named like the abnormal files (nonzero = "
                                   "lesion): adds pixel AUROC and AUPRC of the error maps")
    e.add_argument("--out", default="evaluation", help="folder for metrics.json and the plots (default evaluation/)")
    e.add_argument("--batch-size", type=_POSITIVE, default=64)
    _common_io(e, with_size=False)
    e.set_defaults(func=cmd_evaluate)


def _benchmark_parser(sub) -> None:
    """``patchgan-fast benchmark``."""
    from ..evaluation import REGISTRY
    from ..evaluation.tables import DATASETS, DEFAULT_METHODS

    b = sub.add_parser("benchmark", help="every method on a built-in dataset: tables, plots, JSON", description=(
        "Train and evaluate each method on a built-in dataset and write table.md (paper-style Tables 1 and 2), "
        "roc.png, scores.png and results.json (every figure with the seed, versions and hardware)."))
    b.add_argument("dataset", choices=DATASETS, help="brain-mri: registered synthetic subjects from two real T1 "
                   "brains with lesions modelled on pathology; brain-mri-unregistered: the earlier, harder construction "
                   "(one brain, per-slice rotation and scaling)")
    b.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated names from: {', '.join(REGISTRY)} (default {','.join(DEFAULT_METHODS)})")
    b.add_argument("--perceptual-net", default=None, metavar="FILE",
                   help="feature network for perceptual_ae as a .pt2 file from torch.export.save, e.g. ImageNet VGG19 "
                        "features exported with dynamic batch, height and width (default: a random-init stand-in; "
                        "nothing is downloaded)")
    b.add_argument("--jobs", type=_POSITIVE, default=1,
                   help="models trained at once, each in its own process (default 1); on a GPU 4-8 keep it busy")
    b.add_argument("--setting", choices=["one-class", "semi-supervised"], default="one-class",
                   help="semi-supervised: also an unlabelled pool with --anomaly-ratio abnormal images, and each method "
                        "that can learn from it trained once more with it (default one-class)")
    b.add_argument("--anomaly-ratio", type=_ratio, default=0.6,
                   help="abnormal share of the unlabelled pool, in [0, 1) (default 0.6, SAGAN's and DDAD's)")
    b.add_argument("--quick", action="store_true", help="a reduced run (2 classes, subsets, 60 steps) for a CPU")
    b.add_argument("--steps", type=_POSITIVE, default=None, help="training steps per model (default 3000, 60 with --quick)")
    b.add_argument("--classes", default=None, help="Fashion-MNIST normal classes, e.g. 0,3,7 (default all; 0,1 quick)")
    b.add_argument("--size", type=_POSITIVE, default=None,
                   help="brain MRI slice size (default: brain-mri 128, 64 with --quick; brain-mri-unregistered 64)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--data", default=None, help="dataset folder (default: where the Debian packages and, for the MNI "
                   "template of brain-mri, the nilearn package install it)")
    b.add_argument("--out", default="benchmark-output", help="output folder (default benchmark-output/)")
    b.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out: the models it finished (kept in OUT/jobs/) are not "
                        "trained again, and one it was training continues from its checkpoint there")
    b.set_defaults(func=cmd_benchmark)


def _demo_parser(sub) -> None:
    """``patchgan-fast demo``."""
    d = sub.add_parser("demo", help="the whole loop on built-in real brain MRI", description=(
        "Train on normal axial slices of the built-in brain MRI data (synthetic subjects from two real T1 brains: "
        "Colin27 of the Debian package mricron-data and MNI ICBM152 of the nilearn package), screen held-out normal "
        "and lesioned slices of other subjects, print the AUROC (overall, per lesion kind and size), the flagged "
        "slices and where the report is."))
    d.add_argument("--size", type=_POSITIVE, default=64, help="slice size (default 64)")
    d.add_argument("--patch-size", type=_POSITIVE, default=8)
    d.add_argument("--steps", type=_POSITIVE, default=300, help="training steps (default 300, about 2 minutes on 2 CPU cores)")
    d.add_argument("--batch-size", type=_POSITIVE, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--data", default=None, help="a folder with ch2bet.nii.gz and the MNI ICBM152 files (default: "
                   "mricron-data's and nilearn's)")
    d.add_argument("--out", default="demo-output", help="output folder (default demo-output/); a rerun replaces the "
                   "outputs of an earlier demo there, and a folder the demo did not write is refused")
    d.set_defaults(func=cmd_demo)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (what was received, what is expected) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


def _int_at_least(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an int >= {least}, got {value}")
        return value

    parse.__name__ = f"int >= {least}"
    return parse


_POSITIVE, _NATURAL = _int_at_least(1), _int_at_least(0)


def _float_in(ok, what: str, quote_range: bool = True):
    """An argparse type: a float for which ``ok(value)`` holds, else an error saying ``expected {what}``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {repr(text) if quote_range else text}")
        return value
    return parse


_ratio = _float_in(lambda v: 0 <= v < 1, "a number in [0, 1)")
_non_negative_float = _float_in(lambda v: 0 <= v < float("inf"), "a number >= 0")
_positive_float = _float_in(lambda v: 0 < v < float("inf"), "a positive number", quote_range=False)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="patchgan-fast", description="Patch-GAN novelty detection for medical images.")
    p.add_argument("--version", action="version", version=f"patchgan_fast {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    _train_parser(sub)
    _screen_parser(sub)
    _evaluate_parser(sub)
    _benchmark_parser(sub)
    _demo_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one command. Ctrl-C and SIGTERM (``timeout``, batch schedulers) both stop it the same way: finished
    work is kept, worker processes are stopped, and the exit status is 130."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2

    old_term = signal.signal(signal.SIGTERM, interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"{parser.prog} {args.command}: error: {printable(exc)}", file=sys.stderr)
        return 2
    except WriteError as exc:
        print(f"{parser.prog} {args.command}: error: {printable(exc.strerror or exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished work is kept (rerun with --resume)", file=sys.stderr)
        return 130
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
