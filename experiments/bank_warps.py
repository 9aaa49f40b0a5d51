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
from scipy import ndimage

from patchgan_fast import TrainConfig
from patchgan_fast.data.datasets.brain_subjects import QUICK, load_brain_subjects
from patchgan_fast.models.schedule import validation_split
from patchgan_fast.scoring import neighbours as nb

KINDS = ("infarct", "ms", "small", "tumour")


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
        train, test = load_brain_subjects(args.size, seed, QUICK["train_subjects"], QUICK["test_subjects"])
        val, trn = validation_split(len(train.images), TrainConfig(image_size=args.size), train.subjects)
        own, held = train.images[trn].float(), train.images[val].float()
        foreign = nb.foreign_patches(held, 2 * len(held), seed=seed)
        window = nb.peak_window(args.size)
        for setting in settings:
            t0 = time.time()
            images = own if setting is None else torch.cat(
                [own, warped(own, int(setting[0]), setting[1], setting[2], seed)])
            bank = nb.bank_images(images)
            described = nb.describe(bank)
            outline = nb.choose_outline(nb.patch_distance_maps(held, bank, 40, 0, bank_description=described), held,
                                        nb.patch_geometry(args.size)[1])
            score = {name: nb.peaks(nb.patch_distance_maps(x, bank, 40, outline, bank_description=described), window)
                     for name, x in (("held", held), ("test", test.images.float()), ("foreign", foreign))}
            labels, s = test.labels, score["test"]
            row = [nb.auroc(s[labels == 0], s[labels == 1])]
            row += [nb.auroc(s[labels == 0], s[torch.tensor([k == kind for k in test.kinds])]) for kind in KINDS]
            row += [nb.auroc(score["held"], score["foreign"]), time.time() - t0]
            copies = f"{int(setting[0])} warped cop{'y' if setting[0] == 1 else 'ies'}" if setting else ""
            name = "the package's bank" if setting is None else \
                f"+ {copies}, {setting[1]:g} px, smooth {setting[2]:g} px"
            rows.setdefault(name, []).append(row)
            print(f"seed {seed} {name}: {row[0]:.3f} foreign {row[-2]:.3f} ({row[-1]:.0f} s)", flush=True)
    print(f"\n{args.size}x{args.size}: image AUROC (mean over draws {args.seeds})\n")
    print("| bank | image AUROC (per draw) | " + " | ".join(KINDS) + " | foreign patches | seconds |")
    print("|---|---|" + "---|" * (len(KINDS) + 2))
    for name, r in rows.items():
        r = np.array(r)
        each = " / ".join(f"{v:.3f}" for v in r[:, 0])
        print(f"| {name} | {r[:, 0].mean():.3f} ({each}) | " + " | ".join(f"{v:.3f}" for v in r[:, 1:-1].mean(0))
              + f" | {r[:, -1].mean():.0f} |")


if __name__ == "__main__":
    main()
