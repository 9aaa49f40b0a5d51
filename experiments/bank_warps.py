"""Experiment (issue 26): the ``patches`` bank grown with smoothly warped copies of its own slices.

The normal test slices whose maps peak highest hold cortex whose folds no bank subject has at that place; a bigger
bank (more subjects) gained +0.03-0.05 at 128x128. Here each bank slice also enters the bank as ``copies`` copies
warped by a random smooth in-plane displacement field (Gaussian-smoothed noise, standard deviation ``amplitude``
pixels, smooth over ``sigma`` pixels: elastic augmentation, as any registration pipeline's residual leaves folds a
little displaced), so the nearest patch of a fold displaced in the query can be found. The 40 bank slices searched
are still found by their ranks, now among the copies too. Image AUROC per kind on the quick subjects and the same
score's AUROC for foreign patches pasted into the validation slices (what normal data alone could choose on), the
distance alone (no model), the package's window and outline.

    python experiments/bank_warps.py [--size 64] [--seeds 0,1]   # 1-4 min per draw at 64x64

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from pixel_spread import distance, image_row, print_rows, split, three_maps  # this folder's: run as scripts
from scipy import ndimage

from patchgan_fast.scoring import neighbours as nb


def warped(images, copies, amplitude, sigma, seed):
    """``copies`` warped copies of each of ``images`` [N, 1, S, S] (float in [0, 1]), [N * copies, 1, S, S]."""
    rng = np.random.default_rng(seed)
    n, _, s, _ = images.shape
    out = []
    base = torch.stack(torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")[::-1], -1)
    for _ in range(copies):
        field = np.stack([ndimage.gaussian_filter(rng.standard_normal((n, s, s)), (0, sigma, sigma))
                          for _ in range(2)], -1)
        field *= amplitude / field.reshape(-1, 2).std(0).clip(1e-6)  # pixels
        grid = base + torch.from_numpy(field.astype(np.float32)) * (2 / (s - 1))
        out.append(F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True))
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--settings", default="1:0.5:4,1:1:4,1:2:4,1:1:8,1:2:8,3:1:4,3:2:8",
                    help="copies:amplitude:sigma, comma separated")
    args = ap.parse_args()
    torch.set_num_threads(2)
    settings = [None] + [tuple(float(v) for v in s.split(":")) for s in args.settings.split(",")]
    rows = {}
    for seed in map(int, args.seeds.split(",")):
        test, own, held = split(args.size, seed)
        window = nb.peak_window(args.size)
        for setting in settings:
            t0 = time.time()
            images = own if setting is None else torch.cat(
                [own, warped(own, int(setting[0]), setting[1], setting[2], seed)])
            maps = three_maps(test, held, distance(images, held), seed)
            row = image_row({name: nb.peaks(m, window) for name, m in maps.items()}, test) + [time.time() - t0]
            name = "the package's bank" if setting is None else (
                f"+ {int(setting[0])} warped cop{'y' if setting[0] == 1 else 'ies'}, {setting[1]:g} px, "
                f"smooth {setting[2]:g} px")
            rows.setdefault(name, []).append(row)
            print(f"seed {seed} {name}: {row[0]:.3f} foreign {row[-2]:.3f} ({row[-1]:.0f} s)", flush=True)
    print(f"\n{args.size}x{args.size}: image AUROC (mean over draws {args.seeds})\n")
    print_rows("bank", rows, seconds=True)


if __name__ == "__main__":
    main()
