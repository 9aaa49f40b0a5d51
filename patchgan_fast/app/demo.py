"""``patchgan-fast demo``: the whole loop on built-in real data.

Trains a Patch-GAN on normal axial slices of the built-in brain MRI data set at its quick setting (synthetic
subjects from two real T1 brains, Colin27 of the Debian package mricron-data and the MNI ICBM152 template of the
nilearn package, see ``patchgan_fast.data.datasets.brain_subjects``), writes the held-out test slices (half with
a lesion modelled on pathology) as 16-bit PNG files and their lesion masks beside them, screens that folder like
any collection (ranked CSV with a calibrated flag, pictures of the top images with the ground truth, HTML
report), and prints how well the ranking separates lesioned from normal slices, overall and per lesion kind.
About two minutes on a 2-core CPU.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data import image_key, read_images, to_uint8
from ..data.datasets.brain_subjects import FOV_MM, QUICK, load_brain_subjects
from ..evaluation import image_metrics, plot_distributions, plot_roc
from ..evaluation.tables import brain_figures
from ..models import PatchGAN, TrainConfig
from ..scoring import score_batch
from ..scoring.batch import maps_and_scores
from ..scoring.neighbours import peak_window, peaks
from .errors import UsageError
from .records import printable
from .report import score_weights
from .screening import screen


_MARKER = ".patchgan-fast-demo"
_OUTPUTS = ("test-slices", "test-masks", "screening", "brain-mri.pgf", "roc.png", "scores.png", _MARKER)


def _top_patch_on_lesion(row: dict, lesion: torch.Tensor, patch_size: int) -> bool:
    """Whether the top patch of a ``scores.csv`` row holds a pixel of the ``lesion`` mask [H, W]."""
    y, x = int(row["top_y"]), int(row["top_x"])
    return bool(lesion[y:y + patch_size, x:x + patch_size].any())


def _clear(out: Path) -> None:
    """Removes an earlier demo's outputs from ``out``; refuses a folder the demo did not write."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; expected a folder for the demo's outputs")
    if not (out / _MARKER).exists():
        if any(out.iterdir()):
            raise UsageError(f"--out {str(out)!r} is not empty and was not written by the demo; choose another folder")
        return
    for name in _OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def run(args) -> int:
    try:
        train, test = load_brain_subjects(args.size, args.seed, QUICK["train_subjects"], QUICK["test_subjects"],
                                          path=args.data, mni_path=args.data)
    except FileNotFoundError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    _clear(out)
    slices, masks = out / "test-slices", out / "test-masks"
    slices.mkdir(parents=True)
    masks.mkdir()
    (out / _MARKER).write_text("written by patchgan-fast demo; a rerun replaces this folder's demo outputs\n")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    subjects = len(set(train.subjects.tolist())), len(set(test.subjects.tolist()))
    print(f"brain MRI: {len(train.images)} normal training slices of {subjects[0]} subjects, {len(test.images)} held-out "
          f"slices of {subjects[1]} other subjects ({int(test.labels.sum())} with a lesion), {args.size}x{args.size} "
          f"({FOV_MM / args.size:.1f} mm pixels); device {device}")

    # neighbours="patches": registered slices, so each patch is also compared with the nearest patch near the same
    # place in the most similar training slices (patchgan_fast.scoring.neighbours)
    config = TrainConfig(image_size=args.size, patch_size=args.patch_size, width=16, depth=4, skips=True,
                         loss="reconstruction", steps=args.steps, batch_size=args.batch_size, lr=1e-3, val_every=100,
                         seed=args.seed, neighbours="patches")
    t0 = time.perf_counter()
    model = PatchGAN.fit(train.images, config, groups=train.subjects)  # whole subjects validate: a calibrated flag
    model.save(out / "brain-mri.pgf")
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s -> {out / 'brain-mri.pgf'}")
    print(f"score: {score_weights(model)}")

    from PIL import Image as PILImage

    names = []
    for i, (img, kind, z) in enumerate(zip(test.images, test.kinds, test.slices.tolist())):
        name = f"{i:03d}-{kind or 'normal'}-z{z}.png"
        PILImage.fromarray((img[0].numpy() * 65535).round().astype(np.uint16)).save(slices / name)
        if kind:
            PILImage.fromarray(test.lesions[i, 0].numpy().astype(np.uint8) * 255).save(masks / name)
        names.append(name)
    summary = screen(model, [slices], out / "screening", top=20, progress=False, num_workers=0, truth=masks)
    print(f"screened {summary.scored} slices -> {out / 'screening' / 'scores.csv'}")
    with open(out / "screening" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    flagged = [r for r in rows if r["flagged"] == "1"]
    caught = sum("normal" not in r["path"] for r in flagged)
    lesioned = int(test.labels.sum())
    print(f"flagged (score above the 99th percentile of the normal validation subjects' scores): {len(flagged)} "
          f"slices: {caught} of the {lesioned} with a lesion, {len(flagged) - caught} of the {len(rows) - lesioned} "
          f"normal ones")
    on_lesion = sum(_top_patch_on_lesion(r, test.lesions[names.index(Path(r["path"]).name), 0], args.patch_size)
                    for r in rows if "normal" not in r["path"])
    print(f"scores.csv's top patch lies on the lesion in {on_lesion} of the {lesioned} slices with one")

    # the same images as the screening scored them (as uint8), for the comparisons below: the shipped scores as the
    # screening wrote them; the bank searched once more for the distance maps, which the eq. 5 maps reuse
    images = torch.stack([to_uint8(read_images(slices / n)[0].pixels) for n in names]).to(device)
    keys = torch.tensor([image_key(str(slices / n), None) for n in names], device=device)
    labels = test.labels.tolist()
    written = {Path(r["path"]).name: float(r["score"]) for r in rows}
    shipped = torch.tensor([written[n] for n in names])
    near = model.patch_distance_maps(images)
    heat, ranked = (t.cpu() for t in maps_and_scores(model, images, keys=keys, patch_maps=near))
    eq5 = dataclasses.replace(model.score_config, neighbour_scales=None)
    unranked = score_batch(model, images, eq5.with_ranking("none"), keys=keys).scores.cpu()
    nearest = peaks(near, model.patch_window or peak_window(args.size)).cpu()
    figures = brain_figures(shipped, heat, test)  # the benchmark's brain MRI figures
    curves = {"eq. 5 + nearest patches (shipped)": shipped, "eq. 5, ranked (paper 1.1, 1.0)": ranked,
              "eq. 5, unranked (sum)": unranked, "nearest patches alone": nearest}
    plot_roc({k: (v.tolist(), labels) for k, v in curves.items()}, out / "roc.png", "brain MRI, lesions")
    plot_distributions(shipped.tolist(), labels, out / "scores.png", "brain MRI, scores")
    order = torch.argsort(shipped, descending=True)[:10].tolist()

    print()
    for name, scores in curves.items():
        print(f"image AUROC, {name + ':':<37}{image_metrics(scores.tolist(), labels)['auroc']:.3f}")
    print(f"pixel AUROC / AUPRC of the error map (lesioned slices): "
          f"{figures['pixel_auroc']:.3f} / {figures['pixel_auprc']:.3f}")
    kinds = sorted(set(test.kinds) - {""})
    for what, groups, names in (("kind", test.kinds, kinds), ("size", test.size_bins, test.bins)):
        parts = [f"{n} {figures[f'image_auroc_{n}']:.3f} ({groups.count(n)})" for n in names
                 if f"image_auroc_{n}" in figures]
        print(f"image AUROC by lesion {what} (lesioned slices): {', '.join(parts)}")
    print(f"top 10 by score: {sum(labels[i] for i in order)} of 10 have a lesion")
    print(f"report: {(out / 'screening' / 'report.html').resolve()}   plots: {out / 'roc.png'}, {out / 'scores.png'}")
    return 0
