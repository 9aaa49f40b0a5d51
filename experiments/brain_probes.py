"""Experiment (issue 5): how far do simple normal-data models get on the brain MRI synthetic lesions?

Probes, no test label used for any choice, on the brain-mri split at 64x64 with 16 test copies per test slice
(192 test images, half lesioned; one image AUROC has a standard error of about 0.04):

- low-pass residual: the cached 2,400-step Patch-GAN of ``brain_levers.py`` (``--model``), each pixel's
  reconstruction from the copy that hid it (K = 4 phases, patch 8); the squared residual smoothed over k x k,
  against the residual smoothed first and then squared (zero-mean texture errors cancel, a lesion's intensity
  shift stays);
- patch nearest neighbour: every p x p test patch's L2 distance to the nearest training patch (any position),
  the map's maximum as the image score;
- asymmetry: each image against its mirror image, registered by a search over rotations (+-24 degrees) and
  horizontal shifts (+-6 px); the squared difference, smoothed.

    python experiments/brain_probes.py [--model DIR/base-2400.pgf]   # about 3 minutes on 2 CPU cores
    python experiments/brain_probes.py --size 128 --probes nearest,asymmetry   # about 8 minutes

Results: experiments/results/cpu-experiment-brain-levers.md
"""

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from brain_levers import reconstruction, smooth

from patchgan_fast import PatchGAN, score_batch
from patchgan_fast.ops.reference import normalize_reference
from patchgan_fast.data.datasets import load_brain_mri
from patchgan_fast.evaluation import image_metrics, pixel_metrics


def report(name: str, maps: torch.Tensor, test) -> None:
    y, sick = test.labels.tolist(), test.labels == 1
    px = pixel_metrics(list(maps[sick].numpy()), list(test.lesions[sick, 0].numpy()))["pixel_auroc"]
    flat = maps.flatten(1)
    top = flat.topk(max(1, flat.shape[1] // 100), 1).values.mean(1)
    print(f"| {name} | {image_metrics(flat.amax(1).tolist(), y)['auroc']:.3f} | {image_metrics(top.tolist(), y)['auroc']:.3f} "
          f"| {px:.3f} |", flush=True)


def residuals(model: PatchGAN, x: torch.Tensor) -> torch.Tensor:
    """[B, H, W] image minus each pixel's reconstruction from the copy that hid it (normalized units)."""
    cfg = model.score_config
    rec = torch.cat([reconstruction(model, x[i:i + 64], 8) for i in range(0, len(x), 64)])
    return normalize_reference(x, cfg.mean, cfg.std)[:, 0] - rec


def nearest_patch(train, test, p: int, stride: int) -> torch.Tensor:
    bank = F.unfold(train, p, stride=stride).transpose(1, 2).reshape(-1, p * p)
    bank = bank[bank.abs().sum(1) > 0]  # no empty background patches
    q = F.unfold(test, p, stride=stride).transpose(1, 2).reshape(-1, p * p)
    dist = torch.cat([torch.cdist(q[i:i + 4096], bank).amin(1) for i in range(0, len(q), 4096)])
    g = (test.shape[-1] - p) // stride + 1
    return F.interpolate(dist.view(len(test), 1, g, g), size=test.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def asymmetry(x: torch.Tensor, max_shift: int = 6) -> torch.Tensor:
    """[B, H, W] image minus its mirror image, registered per image (rotation and horizontal shift)."""
    n, size = len(x), x.shape[-1]
    mirrored = x.flip(-1)
    best, err = mirrored, torch.full((n,), float("inf"))
    for degrees in np.arange(-24, 25, 2):
        a = np.deg2rad(degrees)
        for shift in range(-max_shift, max_shift + 1):
            theta = torch.tensor([[np.cos(a), -np.sin(a), 2 * shift / size], [np.sin(a), np.cos(a), 0]],
                                 dtype=torch.float32).expand(n, 2, 3)
            w = F.grid_sample(mirrored, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
            e = ((w - x) ** 2).flatten(1).mean(1)
            better = e < err
            err = torch.where(better, e, err)
            best = torch.where(better[:, None, None, None], w, best)
    return (x - best)[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/brain_levers_rot/base-2400.pgf", help="a model cached by brain_levers.py")
    ap.add_argument("--size", type=int, default=64, help="slice size; patch sizes, strides and shifts scale with it")
    ap.add_argument("--probes", default="patchgan,nearest,asymmetry", help="which probes to run (comma-separated)")
    args = ap.parse_args()
    probes, f = args.probes.split(","), args.size // 64
    torch.set_num_threads(2)
    train, test = load_brain_mri(size=args.size, test_copies=16)
    print("| probe | image AUROC, max | image AUROC, top 1 % | pixel AUROC |\n|---|---|---|---|")
    if "patchgan" in probes and os.path.exists(args.model):
        model = PatchGAN.load(args.model)
        y = test.labels.tolist()
        scores = torch.cat([score_batch(model, test.images[i:i + 64]).scores for i in range(0, len(test.images), 64)])
        print(f"| Patch-GAN 2,400 steps, the package's score | {image_metrics(scores.tolist(), y)['auroc']:.3f} | | |")
        d = residuals(model, test.images)
        for k in (1, 3, 5, 7, 9):
            report(f"Patch-GAN residual, squared then smoothed k{k}", smooth(d * d, k), test)
            report(f"Patch-GAN residual, smoothed k{k} then squared", smooth(d, k) ** 2, test)
    if "nearest" in probes:
        for p, stride in ((4 * f, 2 * f), (8 * f, 4 * f), (8 * f, 2 * f), (12 * f, 4 * f)):
            report(f"nearest training patch, {p}x{p}, stride {stride}", nearest_patch(train.images, test.images, p, stride),
                   test)
    if "asymmetry" in probes:
        d = asymmetry(test.images, max_shift=6 * f)
        for k in (1, 3, 5, 7):
            k = k * f + (f > 1) * (1 - k * f % 2)  # odd windows of the same physical size
            report(f"asymmetry, squared then smoothed k{k}", smooth(d * d, k), test)


if __name__ == "__main__":
    main()
