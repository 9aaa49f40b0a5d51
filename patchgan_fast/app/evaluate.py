"""``patchgan-fast evaluate``: detection metrics and plots of a model on labelled files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ..data import fit_to_size, image_key, read_images
from ..evaluation import image_metrics, pixel_metrics, plot_distributions, plot_roc
from ..models import load_model
from ..models.files import error_map, make_scorer
from .errors import UsageError
from .files import check_inputs, load_collection, workers
from .records import printable


def _score_all(model, images: torch.Tensor, ids, batch: int, device) -> torch.Tensor:
    """Scores [N] on the CPU, with each image's mask key from its path."""
    scorer = make_scorer(model, device)
    scores = []
    for i in range(0, len(images), batch):
        keys = torch.tensor([image_key(p, s) for p, s in ids[i:i + batch]], dtype=torch.int64)
        scores.append(scorer(images[i:i + batch], keys)[0].cpu())
    return torch.cat(scores)


def _pixel_metrics(model, images: torch.Tensor, ids, masks_dir: str, resize: str) -> dict:
    """Pixel AUROC/AUPRC of the model's maps (:func:`~patchgan_fast.models.files.error_map`) against the masks of the
    same file names."""
    size = model.config.image_size
    found, truth, missing = [], [], 0
    for i, (path, s) in enumerate(ids):
        mask_path = Path(masks_dir) / Path(path).name
        try:
            frames = read_images(mask_path)
        except Exception:  # no readable mask of that name
            missing += 1
            continue
        frame = next((m for m in frames if m.slice == s), frames[0])
        mask, _ = fit_to_size(frame.pixels[:1], size, 1, resize)
        truth.append((mask[0] > 0.5).numpy())
        found.append(i)
    if not found:
        raise SystemExit(f"error: no mask in {printable(masks_dir)} matches the abnormal file names")
    heat = error_map(model, images[found], keys=torch.tensor([image_key(*ids[i]) for i in found], dtype=torch.int64))
    return {**pixel_metrics(list(heat.numpy()), truth), "masks_found": len(found), "masks_missing": missing}


def evaluate(a) -> int:
    """``patchgan-fast evaluate``: image (and with --masks pixel) AUROC and AUPRC, roc.png, scores.png, metrics.json."""
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model = load_model(a.model).to(device)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    size, ch = model.config.image_size, model.channels
    if a.labels:
        try:
            with open(a.labels, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise UsageError(f"--labels {a.labels!r} is not a readable CSV file ({exc})") from exc
        if not rows or not {"path", "label"} <= set(rows[0]) or any(r["label"] not in ("0", "1") for r in rows):
            raise UsageError(f"{a.labels} needs the columns path,label with label 0 (normal) or 1 (abnormal)")
        groups = {k: [r["path"] for r in rows if r["label"] == str(k)] for k in (0, 1)}
    else:
        if not a.normal or not a.abnormal:
            raise UsageError("give --normal and --abnormal folders, or --labels CSV")
        groups = {0: a.normal, 1: a.abnormal}
    for paths in groups.values():
        check_inputs(paths)
    if a.masks and not Path(a.masks).is_dir():
        raise UsageError(f"--masks {a.masks!r} is not a folder")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise UsageError(f"--out {a.out!r} is a file; expected a folder for metrics.json and the plots")
    scores, labels = [], []
    for label, paths in groups.items():
        images, ids, _ = load_collection(paths, size, ch, a.resize, workers(a.workers))
        scores += _score_all(model, images, ids, a.batch_size, device).tolist()
        labels += [label] * len(ids)
        if label == 1 and a.masks:
            pixel = _pixel_metrics(model, images, ids, a.masks, a.resize)
    metrics = image_metrics(scores, labels)
    if a.masks:
        metrics.update(pixel)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_roc({"SAGAN" if model.method == "sagan" else "Patch-GAN": (scores, labels)}, out / "roc.png")
    plot_distributions(scores, labels, out / "scores.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"image AUROC {metrics['auroc']:.4f}, AUPRC {metrics['auprc']:.4f} "
          f"({metrics['normal']} normal, {metrics['abnormal']} abnormal); plots in {printable(out)}")
    if a.masks:
        print(f"pixel AUROC {metrics['pixel_auroc']:.4f}, AUPRC {metrics['pixel_auprc']:.4f} "
              f"({metrics['masks_found']} masks, {metrics['masks_missing']} abnormal images without one)")
    return 0
