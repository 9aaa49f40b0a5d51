"""Experiment (issue 26): each place of a slice against the nearest patch near the same place in normal slices
(the ``patches`` nearest-neighbour space), on the rebuilt ``brain-mri`` at the quick setting.

The bound in the benchmark (the nearest training patch, slice position known) scored 0.685 while every trained
method stayed near 0.55. Without the slice position: for each test slice, the k training slices most like it
(16 x 16-pooled pixels, Euclidean), and for each pixel the nearest p x p patch centred up to r pixels away in
them (mean squared difference); the image score is the map's 3 x 3-smoothed maximum. Variants: k, p, r; ``inner
e``: pixels within e pixels of the background (0) left out (``inner 0``: the brain's pixels, the background left
out); ``z by n val``: the map in units of the maps of the n
most similar validation slices (mean, std, 5 x 5-smoothed); ``+ eq. 5``: the sum with the demo model's eq. 5
score, each in units of the validation slices' scores (the package's rule for a feature bank); the encoder's
half-resolution features (the demo model's) searched the same way. The test labels only give the AUROCs;
nothing below was chosen by them for the package except as the results file says.

    python experiments/brain_subjects_patches.py [--model /tmp/brain-subjects-levers/patch8-300.pgf]
        # the demo's model (brain_subjects_levers.py trains and caches it); about 15 minutes on 2 CPU cores
    python experiments/brain_subjects_patches.py --outline [--at-128]
        # normal validation slices only (draws 0 and 1): how many of their maxima lie on each ring of the brain's
        # outline against the ring's share of the pixels, and the outline the package chooses from that
    python experiments/brain_subjects_patches.py --at-128
        # the package's patch distance alone on the 128x128 slices of the same subjects; about 4 minutes

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from brain_subjects_levers import report, smoothed_max as smax  # this folder's: run as a script

from patchgan_fast import PatchGAN, TrainConfig, score_batch
from patchgan_fast.data.datasets.brain_subjects import QUICK, load_brain_subjects
from patchgan_fast.models.schedule import validation_split
from patchgan_fast.scoring.neighbours import (box_mean, choose_outline, describe, leave_outline, near_background,
                                             patch_distance_maps, patch_geometry)


def nearest(q, bank, p, r):
    """[H, W]: each pixel's p x p patch of ``q`` [C, H, W] against the nearest within r pixels in ``bank``."""
    h, w = q.shape[-2:]
    padded = F.pad(bank, (r,) * 4)
    best = torch.full((h, w), float("inf"))
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            d = (padded[:, :, dy:dy + h, dx:dx + w] - q).pow(2).sum(1, keepdim=True)
            best = torch.minimum(best, box_mean(d, p)[:, 0].amin(0))
    return best


def maps_for(query, bank, k, p, r):
    idx = torch.cdist(describe(query), describe(bank)).topk(k, 1, largest=False).indices if k else None
    return torch.stack([nearest(x, bank if idx is None else bank[idx[i]], p, r) for i, x in enumerate(query)])


def inner(m, images, e):
    """``m`` inside the brain (pixels > 0), less its outline of e pixels."""
    fg = (images[:, 0] > 0).float()
    return m * fg if e == 0 else m * (1 - F.max_pool2d(1 - fg[:, None], 2 * e + 1, 1, e)[:, 0])


def units(test_scores, val_scores):
    return (test_scores.double() - val_scores.double().mean()) / val_scores.double().std()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/brain-subjects-levers/patch8-300.pgf")
    ap.add_argument("--at-128", action="store_true")
    ap.add_argument("--outline", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    size = 128 if args.at_128 else 64
    if args.outline:  # no labels: the validation subjects' slices are all normal
        for seed in (0, 1):
            train, _ = load_brain_subjects(size, seed, QUICK["train_subjects"], QUICK["test_subjects"])
            val, trn = validation_split(len(train.images), TrainConfig(image_size=size), train.subjects)
            held = train.images[val].float()
            maps = patch_distance_maps(held, train.images[trn].float(), 40, outline=0)
            rows = torch.arange(len(held))
            for e in range(3):
                near = near_background(held, e)
                ring = near_background(held, e + 1) - near
                place = F.avg_pool2d(leave_outline(maps, held, e)[:, None], 3, 1, 1).flatten(1).argmax(1)
                share = (ring.flatten(1).sum(1) / (1 - near).flatten(1).sum(1)).mean()
                print(f"{size}x{size}, draw {seed}, outline {e}: the next ring holds {int(ring.flatten(1)[rows, place].sum())} "
                      f"of {len(held)} normal validation maxima and {100 * float(share):.1f} % of the pixels left")
            print(f"{size}x{size}, draw {seed}: choose_outline -> "
                  f"{choose_outline(maps, held, most=patch_geometry(size)[1])}")
        return
    if args.at_128:
        train, test = load_brain_subjects(size, 0, QUICK["train_subjects"], QUICK["test_subjects"])
        val, trn = validation_split(len(train.images), TrainConfig(image_size=128), train.subjects)
        maps = patch_distance_maps(test.images.float(), train.images[trn].float(), 40)
        report(f"128x128, the package's patch distance (p, r, outline = {patch_geometry(size)}, 40 slices)", smax(maps), maps, test)
        return
    train, test = load_brain_subjects(**QUICK)
    model = PatchGAN.load(Path(args.model))
    val, trn = validation_split(len(train.images), model.config, train.subjects)
    bank, held, query = train.images[trn].float(), train.images[val].float(), test.images.float()
    with torch.inference_mode():
        eq5_test, eq5_val = score_batch(model, test.images).scores, score_batch(model, train.images[val]).scores
    print("| scoring | image AUROC | per kind | pixel AUROC in the brain |\n|---|---|---|---|")
    for k, p, r in ((10, 5, 2), (10, 3, 2), (10, 5, 3), (40, 5, 2), (40, 3, 2), (40, 5, 3), (40, 3, 1), (0, 5, 2),
                    (0, 3, 2)):
        mt, mv = maps_for(query, bank, k, p, r), maps_for(held, bank, k, p, r)
        tag = f"{k or 'all'} slices, p {p}, r {r}"
        for e in (0, 1, 2) if (k, p, r) == (40, 3, 2) else (0, 1):
            t, v = inner(mt, query, e), inner(mv, held, e)
            report(f"{tag}, inner {e}", smax(t), t, test)
            if e == 1:
                report(f"{tag}, inner 1, + eq. 5", (units(smax(t), smax(v)) + units(eq5_test, eq5_val)).float(), t,
                       test)
        if k == 40 and (p, r) in ((3, 2), (5, 2)):
            ref = mv[torch.cdist(describe(query), describe(held)).topk(5, 1, largest=False).indices]
            mu, sd = (F.avg_pool2d(s[:, None], 5, 1, 2)[:, 0] for s in (ref.mean(1), ref.std(1)))
            z = inner((mt - mu) / (sd + 0.1 * sd.mean()), query, 1)
            report(f"{tag}, inner 1, z by 5 val", smax(z), z, test)

    def encoder(x):
        with torch.inference_mode():
            return torch.cat([F.normalize(model.reconstructor._encode((x[i:i + 64] - model.mean[0]) / model.std[0])[1],
                                          dim=1) for i in range(0, len(x), 64)])

    ft, fb = encoder(query), encoder(bank)
    idx = torch.cdist(describe(query), describe(bank)).topk(40, 1, largest=False).indices
    for r in (1, 2):
        m = torch.stack([nearest(f, fb[idx[i]], 1, r) for i, f in enumerate(ft)])
        up = F.interpolate(m[:, None], size=query.shape[-1], mode="bilinear", align_corners=False)[:, 0]
        up = up * (query[:, 0] > 0)
        report(f"encoder 1/2 features, 40 slices, r {r}", smax(up), up, test)


if __name__ == "__main__":
    main()
