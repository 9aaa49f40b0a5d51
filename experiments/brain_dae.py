"""Experiment (issue 5): a denoising reconstructor on the brain MRI synthetic lesions.

Kascenas, O'Neil and Pugh ("Denoising autoencoders for unsupervised anomaly detection in brain MRI",
MIDL 2022) train a U-Net to remove *coarse* noise from normal slices: Gaussian noise drawn on a grid
1/8 of the image side (16x16 for their 128x128 slices), standard deviation 0.2, upsampled and added;
the target is the clean slice. The network learns to repair low-frequency intensity changes that are
not normal anatomy while it sees the whole slice, instead of inventing hidden tissue as an inpainting
reconstructor must. The anomaly map is the residual of the unmasked slice. Their settings are used as
published (grid 1/8 of the side, std 0.2 on intensities in [0, 1]); nothing is tuned on test labels.

Same split as ``brain_probes.py``/``brain_ceiling.py`` (64x64, 192 test images, half lesioned); the same
network as the benchmark's brain Patch-GAN reconstructor (width 32, depth 3, skips), trained with the
squared error against the clean slice.

    python experiments/brain_dae.py [--steps 1500] [--width 32] [--noise 0.2]
        # about 10 minutes on 2 CPU cores at 1,500 steps

Results: experiments/results/cpu-experiment-brain-levers.md
"""

import argparse
import time

import torch
import torch.nn.functional as F
from brain_ceiling import auroc_per_bin, setup
from brain_probes import report

from patchgan_fast.data.datasets import SIZE_BINS


def coarse_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise on a grid 1/8 of the image side, upsampled bilinearly to the image."""
    n, c, h, w = x.shape
    coarse = std * torch.randn(n, c, max(1, h // 8), max(1, w // 8), generator=gen)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--noise", type=float, default=0.2, help="standard deviation of the coarse noise")
    args, train, test, net, opt = setup(ap, width=32, train_copies=4)
    gen = torch.Generator().manual_seed(args.seed + 5)
    t0 = time.time()
    for step in range(args.steps):
        x = train.images[torch.randint(len(train.images), (args.batch,), generator=gen)]
        loss = F.mse_loss(net(2 * (x + coarse_noise(x, args.noise, gen)) - 1), 2 * x - 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.5f} ({time.time() - t0:.0f} s)", flush=True)
    net.eval()
    with torch.no_grad():
        rec = torch.cat([net(2 * test.images[i:i + 64] - 1) for i in range(0, len(test.images), 64)])
    sq = (rec - (2 * test.images - 1)).square()
    print(f"\n{args.size}x{args.size}, {args.steps} steps, noise {args.noise}, {time.time() - t0:.0f} s\n")
    print("| map | image AUROC, max | image AUROC, top 1 % | pixel AUROC |\n|---|---|---|---|")
    for k in (1, 3, 5):
        maps = F.avg_pool2d(sq, k, 1, k // 2, count_include_pad=False)[:, 0]
        report(f"residual squared, smoothed k{k}", maps, test)
        report(f"residual squared, smoothed k{k}, masked to the brain", maps * test.brain[:, 0], test)
    # the last map of the loop: k5, masked to the brain
    per_bin = auroc_per_bin((maps * test.brain[:, 0]).flatten(1).amax(1), test)
    print("\nk5 masked to the brain, max, AUROC per lesion size: "
          + ", ".join(f"{b} {a:.3f}" for (b, _), a in zip(SIZE_BINS, per_bin)))


if __name__ == "__main__":
    main()
