"""Experiment (issue 5): which scoring levers move brain MRI detection (image and pixel AUROC)?

Trains the Patch-GAN once per training variant on the brain-mri training split (64x64, width 16, depth 3,
skips, reconstruction loss, batch 32, lr 1e-3), holding out every training slice with index % 5 == 0
(all its augmented copies) as normal-only validation data, and scores the test split several ways from
the same reconstructions (K = 4 phases masks):

- patch sums (the package's eq. 2 errors, unranked) and the paper's ranking, with and without
  position weights from the validation patch errors;
- pixel maps: each pixel's squared error in the copy that hid it, optionally smoothed, their maximum
  or top 1 %, over their mean inside the brain, or divided by the local variance of the reconstruction;
- pixel maps divided by the mean validation error at the same position (normal data only);
- the same patch scorings and pixel maps with the structural error (``error='msgms'``) instead of the
  squared error, and the patch scorings with both (``error='mse+msgms'``, scaled by the spread of each
  measure's validation scores).

    python experiments/brain_levers.py --steps 2400 [--variants base,patch16]   # ~20 min per 1,000 steps

Results: experiments/results/cpu-experiment-brain-levers.md
"""

import argparse
import dataclasses
import os
import time

import torch
import torch.nn.functional as F

from patchgan_fast import PatchGAN, TrainConfig, error_maps, score_batch
from patchgan_fast.data.datasets import load_brain_mri
from patchgan_fast.evaluation import image_metrics, pixel_metrics
from patchgan_fast.models.training import validation_statistics

VARIANTS = {"base": {}, "patch16": dict(patch_size=16), "patch4": dict(patch_size=4)}  # training overrides


def pixel_errors(model: PatchGAN, x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, H, W] squared error of each pixel in the copy that hid it (K = 4 phases at ``patch``)."""
    cfg = dataclasses.replace(model.score_config, patch_size=patch, layout="phases", num_copies=4, patch_weights=None)
    return error_maps(model, x, cfg, smoothing=1)


def smooth(e: torch.Tensor, k: int) -> torch.Tensor:
    return e if k == 1 else F.avg_pool2d(e[:, None], k, 1, k // 2, count_include_pad=False)[:, 0]


def local_variance(r: torch.Tensor, k: int) -> torch.Tensor:
    mu = smooth(r, k)
    return (smooth(r * r, k) - mu * mu).clamp_min(0)


def reconstruction(model: PatchGAN, x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, H, W] each pixel's reconstruction from the copy that hid it (normalized units)."""
    cfg = dataclasses.replace(model.score_config, patch_size=patch, layout="phases", num_copies=4)
    r = score_batch(model, x, cfg)
    hid = r.assignment.long().repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return r.reconstructions.float()[:, :, 0].gather(0, hid[None])[0]


def ranked(e: torch.Tensor) -> torch.Tensor:
    top = e.flatten(1).topk(2, dim=1).values
    return 1.1 * top[:, 0] + top[:, 1]


def evaluate(model, val, test, patch):
    y = test.labels.tolist()
    sick = test.labels == 1
    res = {}
    te, ve = pixel_errors(model, test.images, patch), pixel_errors(model, val, patch)
    scaled = dataclasses.replace(model.config, patch_size=patch)
    model.config, saved = scaled, model.config
    validation_statistics(model, val, torch.device("cpu"), 64)  # sets model.error_scales at this patch size
    model.config = saved
    for error in ("mse", "msgms", "mse+msgms"):
        cfg = dataclasses.replace(model.score_config, patch_size=patch, patch_weights=None, error=error)
        te_p, va_p = (torch.cat([score_batch(model, x[i:i + 64], cfg).patch_errors for i in range(0, len(x), 64)]).double()
                      for x in (test.images, val))
        m_pos = va_p.mean(0)
        m = m_pos.mean()
        for name, w in (("patch", 1.0), ("patch x 1.1 m / (m_pos + 0.1 m)", 1.1 * m / (m_pos + 0.1 * m)),
                        ("patch x 2 m / (m_pos + m)", 2 * m / (m_pos + m))):
            e = te_p * w
            tag = "" if error == "mse" else f"{error} "
            res[f"{tag}{name}, sum"] = (image_metrics(e.flatten(1).sum(1).tolist(), y)["auroc"], None)
            res[f"{tag}{name}, paper ranking"] = (image_metrics(ranked(e).tolist(), y)["auroc"], None)
        if error == "msgms":
            for k in (1, 5):
                g = error_maps(model, test.images, cfg, smoothing=k)
                px = pixel_metrics(list(g[sick].numpy()), list(test.lesions[sick, 0].numpy()))["pixel_auroc"]
                res[f"msgms pixel map k{k} max"] = (image_metrics(g.flatten(1).amax(1).tolist(), y)["auroc"], px)
    tissue = (test.images[:, 0] > 0.02).float()
    for k in (1, 5):
        s = smooth(te, k)
        inside = (s * tissue).flatten(1).sum(1) / tissue.flatten(1).sum(1)
        res[f"pixel map k{k} max / mean inside the brain"] = (image_metrics((s.flatten(1).amax(1) / inside).tolist(), y)["auroc"], None)
    rec = torch.cat([reconstruction(model, test.images[i:i + 64], patch) for i in range(0, len(test.images), 64)])
    s = smooth(te / (local_variance(rec, 3) + 0.05), 5)
    px = pixel_metrics(list(s[sick].numpy()), list(test.lesions[sick, 0].numpy()))["pixel_auroc"]
    res["pixel map / (local variance of the reconstruction + 0.05), k5 max"] = (image_metrics(s.flatten(1).amax(1).tolist(), y)["auroc"], px)
    mu = ve.mean(0, keepdim=True)
    for k in (1, 3, 5):
        for norm in ("raw", "position"):
            m = smooth(te, k)
            if norm == "position":
                m = m / (smooth(mu, k) + 1e-3)
            img = {"max": m.flatten(1).amax(1), "top1%": m.flatten(1).topk(41, 1).values.mean(1)}
            px = pixel_metrics(list(m[sick].numpy()), list(test.lesions[sick, 0].numpy()))["pixel_auroc"]
            for agg, s in img.items():
                res[f"pixel map k{k} {norm} {agg}"] = (image_metrics(s.tolist(), y)["auroc"], px)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--variants", default="base")
    ap.add_argument("--cache", default="/tmp/brain_levers")
    args = ap.parse_args()
    train, test = load_brain_mri(size=64)
    held = train.slices % 5 == 0
    fit_x, val = train.images[~held], train.images[held]
    os.makedirs(args.cache, exist_ok=True)
    for variant in args.variants.split(","):
        base = dict(image_size=64, patch_size=8, depth=3, width=16, skips=True, loss="reconstruction", batch_size=32,
                    lr=1e-3, val_fraction=0.0, progress=False, seed=0)
        cfg = TrainConfig(**{**base, **VARIANTS[variant], "steps": args.steps})
        path = os.path.join(args.cache, f"{variant}-{args.steps}.pgf")
        t = time.time()
        if os.path.exists(path):
            model = PatchGAN.load(path)
        else:
            model = PatchGAN.fit(fit_x, cfg)
            model.save(path)
        for patch in sorted({cfg.patch_size, 8}):
            for name, (auc, px) in evaluate(model, val, test, patch).items():
                print(f"{variant} steps={args.steps} score-patch={patch} | {name} | image {auc:.3f} | pixel "
                      f"{'-' if px is None else f'{px:.3f}'}", flush=True)
        print(f"{variant}: {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
