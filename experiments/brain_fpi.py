"""Experiment (issue 5): self-supervised detection with foreign patch interpolation on the brain MRI split.

The supervised ceiling (``brain_ceiling.py``) shows the synthetic lesions are detectable (image AUROC
0.92) by a detector that is *told* what they look like, while every normal-only model stays at 0.52-0.65.
Foreign patch interpolation (FPI; Tan, Hou, Batten, Qiu and Kainz, "Detecting outliers with foreign patch
interpolation", MELBA 2022; the winner of the MOOD 2020 challenge) sits between the two: it uses normal
images only, and makes its own anomalies that have nothing to do with ours. A rectangle of each training
slice is blended with the same rectangle of another training slice, ``(1 - a) * x + a * other`` with
``a ~ U(0, 1)``, and a pixel-wise detector learns to predict ``a`` at every pixel (0 outside the
rectangle; binary cross-entropy with the soft target). A lesion is then a local departure from normal
anatomy of the kind the detector learned to see, and its predicted map is the anomaly map.

The rectangle's sides are drawn uniformly in [0.1, 0.4] of the image side at a uniformly drawn place,
``a`` uniformly, the other slice uniformly among the training images: the published scheme, set before
any run and not tuned. Same split and scoring as ``brain_ceiling.py`` (64x64, the probes' 192 test
images); the same detector (the package's Reconstructor with skips, one output channel read as logits).
No test image, test label or lesion generator is used in training or for any choice.

    python experiments/brain_fpi.py [--steps 1500] [--width 16]
        # about 7 minutes on 2 CPU cores at 1,500 steps

Results: experiments/results/cpu-experiment-brain-levers.md
"""

import argparse
import time

import torch
import torch.nn.functional as F
from brain_ceiling import auroc_per_bin, setup
from brain_probes import report

from patchgan_fast.data.datasets import SIZE_BINS
from patchgan_fast.evaluation import pixel_metrics


def foreign_patches(x: torch.Tensor, pool: torch.Tensor, gen: torch.Generator, sides=(0.1, 0.4)):
    """Blends one rectangle of each image with the same rectangle of a random image of ``pool``.

    Returns (blended images, per-pixel blending factors [N, 1, H, W]: ``a`` inside the rectangle, 0 outside).
    """
    n, _, h, w = x.shape
    other = pool[torch.randint(len(pool), (n,), generator=gen)]
    ph = (h * (sides[0] + (sides[1] - sides[0]) * torch.rand(n, generator=gen))).long().clamp(min=1)
    pw = (w * (sides[0] + (sides[1] - sides[0]) * torch.rand(n, generator=gen))).long().clamp(min=1)
    top = (torch.rand(n, generator=gen) * (h - ph + 1)).long()
    left = (torch.rand(n, generator=gen) * (w - pw + 1)).long()
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + ph).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + pw).view(n, 1, 1)))
    factor = inside.unsqueeze(1).float() * torch.rand(n, 1, 1, 1, generator=gen)
    return (1 - factor) * x + factor * other, factor


def main() -> None:
    args, train, test, net, opt = setup(argparse.ArgumentParser())
    gen = torch.Generator().manual_seed(args.seed + 11)
    t0 = time.time()
    for step in range(args.steps):
        x = train.images[torch.randint(len(train.images), (args.batch,), generator=gen)]
        blended, factor = foreign_patches(x, train.images, gen)
        loss = F.binary_cross_entropy_with_logits(net(2 * blended - 1), factor)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    net.eval()
    with torch.no_grad():
        maps = torch.cat([torch.sigmoid(net(2 * test.images[i:i + 64] - 1))
                          for i in range(0, len(test.images), 64)])[:, 0]
    print(f"\n{args.size}x{args.size}, {args.steps} steps, width {args.width}, {len(test.images)} test images, "
          f"{time.time() - t0:.0f} s\n")
    print("| map | image AUROC, max | image AUROC, top 1 % | pixel AUROC |\n|---|---|---|---|")
    report("predicted blending factor", maps, test)
    report("predicted blending factor, masked to the brain", maps * test.brain[:, 0], test)
    sick = test.labels == 1
    heat, truth, inside = maps[sick].numpy(), test.lesions[sick, 0].numpy(), test.brain[sick, 0].numpy()
    px_brain = pixel_metrics([h[b] for h, b in zip(heat, inside)], [t[b] for t, b in zip(truth, inside)])
    per_bin = auroc_per_bin(maps.flatten(1).amax(1), test)
    print(f"\npixel AUROC in the brain {px_brain['pixel_auroc']:.3f}; image AUROC (max) per lesion size: "
          + ", ".join(f"{b} {a:.3f}" for (b, _), a in zip(SIZE_BINS, per_bin)))


if __name__ == "__main__":
    main()
