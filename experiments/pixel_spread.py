"""Experiment (issue 26): the ``patches`` distance map as a pixel map, spread over the patch it measures.

Each pixel of :func:`~patchgan_fast.scoring.neighbours.patch_distance_maps` is the distance of the p x p patch
centred on it, so a lesion's edge lights up while its inside, a flat dark region like the nearby cerebrospinal
fluid, finds a match and stays dark. Giving each pixel the largest (or the mean) distance of the patches that cover
it (a max or mean filter of the map; PatchCore spreads its patch scores with a Gaussian), or the larger of its
own value and the mean around it (which cannot lose what the map finds by itself), might fill the lesions in.
Pixel AUROC and AUPRC in the brain of the lesioned slices (and AUPRC per kind), on the quick subjects; the image
score (the map's largest window mean) is unchanged. Whether normal data alone could choose the window: the same
figures for foreign patches pasted into the validation slices
(:func:`~patchgan_fast.scoring.neighbours.foreign_patches`, their changed pixels as the truth), no lesion seen.

    python experiments/pixel_spread.py [--size 64] [--seeds 0,1,2,3]   # 10 s per draw at 64x64, 1 min at 128x128

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score

from patchgan_fast import TrainConfig
from patchgan_fast.data.datasets.brain_subjects import QUICK, load_brain_subjects
from patchgan_fast.models.schedule import validation_split
from patchgan_fast.scoring import neighbours as nb


def spreads(maps, p):
    """(name, map) for the map as it is, its w x w means for odd w up to a quarter of the size, its max over p and
    2p + 1, and the larger of the map and each mean."""
    yield "as is (the package's)", maps
    for w in range(3, maps.shape[-1] // 4 + 2, 2):
        yield f"mean {w}x{w}", F.avg_pool2d(maps[:, None], w, 1, w // 2, count_include_pad=False)[:, 0]
    for w in (p, 2 * p + 1):
        yield f"max {w}x{w}", F.max_pool2d(maps[:, None], w, 1, w // 2)[:, 0]
    for w in range(3, maps.shape[-1] // 4 + 2, 2):
        yield f"larger of as is and mean {w}x{w}", nb.filled(maps, w)


KINDS = ("infarct", "ms", "small", "tumour")


def split(size, seed):
    """The quick subjects' draw ``seed`` at ``size``: (test split, the bank's training slices, validation slices)."""
    train, test = load_brain_subjects(size, seed, QUICK["train_subjects"], QUICK["test_subjects"])
    val, trn = validation_split(len(train.images), TrainConfig(image_size=size), train.subjects)
    return test, train.images[trn].float(), train.images[val].float()


def distance(own, held):
    """``maps(x)``: the package's distance maps of images x against a bank of the slices ``own`` (40 searched), with
    the outline the validation slices ``held`` choose."""
    bank = nb.bank_images(own)
    described = nb.describe(bank)
    outline = nb.choose_outline(nb.patch_distance_maps(held, bank, 40, 0, bank_description=described), held,
                                nb.patch_geometry(held.shape[-1])[1])
    return lambda x: nb.patch_distance_maps(x, bank, 40, outline, bank_description=described)


def draw(size, seed):
    """(test split, validation slices, ``maps``): :func:`split`'s draw and its bank's :func:`distance`."""
    test, own, held = split(size, seed)
    return test, held, distance(own, held)


def three_maps(test, held, maps, seed):
    """{"held", "test", "foreign"}: ``maps`` of the validation slices, of the test images and of foreign patches
    pasted into the validation slices (what normal data alone can choose on)."""
    foreign = nb.foreign_patches(held, 2 * len(held), seed=seed)
    return {name: maps(x) for name, x in (("held", held), ("test", test.images.float()), ("foreign", foreign))}


def image_row(score, test):
    """[image AUROC, AUROC per kind of :data:`KINDS`, foreign patches' AUROC] of image scores ``score`` (a dict as
    :func:`three_maps`'s)."""
    s, labels = score["test"], test.labels
    row = [nb.auroc(s[labels == 0], s[labels == 1])]
    row += [nb.auroc(s[labels == 0], s[torch.tensor([k == kind for k in test.kinds])]) for kind in KINDS]
    return row + [nb.auroc(score["held"], score["foreign"])]


def print_rows(first, rows, seconds=False):
    """The table of :func:`image_row`'s rows per draw, ``rows`` {name: [row per draw]}: the mean image AUROC (each
    draw's in brackets) and the mean of the rest; ``seconds``: each row ends in a time, averaged last."""
    print(f"| {first} | image AUROC (per draw) | " + " | ".join(KINDS) + " | foreign patches |"
          + (" seconds |" if seconds else ""))
    print("|---|---|" + "---|" * (len(KINDS) + 1 + seconds))
    for name, r in rows.items():
        r = np.array(r)
        each = " / ".join(f"{v:.3f}" for v in r[:, 0])
        rest = r[:, 1:-1] if seconds else r[:, 1:]
        print(f"| {name} | {r[:, 0].mean():.3f} ({each}) | " + " | ".join(f"{v:.3f}" for v in rest.mean(0)) + " |"
              + (f" {r[:, -1].mean():.0f} |" if seconds else ""))


def pixel_figures(maps, truth, inside):
    t, m = truth[inside].numpy().astype(bool), maps[inside].numpy()
    return roc_auc_score(t, m), average_precision_score(t, m)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2,3")
    args = ap.parse_args()
    torch.set_num_threads(2)
    p = nb.patch_geometry(args.size)[0]
    rows = {}
    for seed in map(int, args.seeds.split(",")):
        test, held, distance_maps = draw(args.size, seed)
        sick = test.labels == 1
        maps = distance_maps(test.images[sick].float())
        inside, truth = test.brain[sick, 0].bool(), test.lesions[sick, 0]
        foreign = nb.foreign_patches(held, 2 * len(held), seed=seed)
        changed = nb.changed_pixels(foreign, held)
        fmaps = distance_maps(foreign)
        finside = ~nb.background(foreign)
        kinds = [k for k, sick_ in zip(test.kinds, sick.tolist()) if sick_]
        for name, m in spreads(maps, p):
            rows.setdefault(name, []).append(pixel_figures(m, truth, inside))
            for kind in sorted(set(kinds)):
                sel = torch.tensor([k == kind for k in kinds])
                rows.setdefault(f"{name} [{kind}]", []).append(pixel_figures(m[sel], truth[sel], inside[sel]))
        for name, m in spreads(fmaps, p):
            rows.setdefault(name + " (foreign)", []).append(pixel_figures(m, changed, finside))
        print(f"seed {seed} done", flush=True)
    print(f"\n{args.size}x{args.size}, patch {p}; pixel AUROC (AUPRC) in the brain per draw ({args.seeds}) and the "
          "mean; in bold the best mean on foreign patches (what normal data alone would choose)\n")
    names = [n for n, _ in spreads(torch.zeros(1, args.size, args.size), p)]
    best = {i: max(names, key=lambda n: np.mean([v[i] for v in rows[n + " (foreign)"]])) for i in (0, 1)}
    print("| map | lesions: pixel AUROC | lesions: pixel AUPRC | foreign patches: AUROC | foreign patches: AUPRC |")
    print("|---|---|---|---|---|")
    for name in names:
        les, fo = rows[name], rows[name + " (foreign)"]
        fmt = lambda v: " / ".join(f"{x:.3f}" for x in v) + f" (mean {np.mean(v):.3f})"
        cells = [fmt([v[i] for v in les]) for i in (0, 1)]
        cells += [f"**{fmt([v[i] for v in fo])}**" if best[i] == name else fmt([v[i] for v in fo]) for i in (0, 1)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    kinds = sorted({n.split("[")[1][:-1] for n in rows if "[" in n})
    print("\nPixel AUPRC by lesion kind (mean over the draws)\n")
    print("| map | " + " | ".join(kinds) + " |\n|---|" + "---|" * len(kinds))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{np.mean([v[1] for v in rows[f'{name} [{k}]']]):.3f}" for k in kinds) + " |")


if __name__ == "__main__":
    main()
