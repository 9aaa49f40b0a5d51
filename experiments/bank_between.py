"""Experiment (issue 26): the ``patches`` bank grown with slices between its own positions.

Test slices come from held-out axial positions (blocks of five 2 mm steps: three train, one tests, one is a gap), so
a normal test slice's folds lie between those of the bank's slices. Here each bank subject's consecutive training
positions also enter the bank blended, (1 - a) x the lower + a x the upper slice for each a in ``--weights``: an
approximation of the slices between them (partial volume of the two), so a fold that moves from one position to the
next can be matched part way. The 40 bank slices searched are still found by their ranks, now among the blends too.
Image AUROC per kind on the quick subjects and how well the same score tells foreign patches pasted into the
validation slices (what normal data alone could choose on), the distance alone (no model), the package's window
and outline.

    python experiments/bank_between.py [--size 64] [--seeds 0,1,2,3]   # 1-4 min per draw at 64x64

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse
import time

import torch
from pixel_spread import distance, image_row, print_rows, three_maps  # this folder's: run as scripts

from patchgan_fast import TrainConfig
from patchgan_fast.data.datasets.brain_subjects import QUICK, load_brain_subjects
from patchgan_fast.models.schedule import validation_split
from patchgan_fast.scoring import neighbours as nb


def between(images, subjects, z, weights, gap_mm):
    """Blends of each subject's consecutive positions (at most ``gap_mm`` apart) at ``weights``: [M, 1, S, S]."""
    out = []
    for s in subjects.unique():
        idx = (subjects == s).nonzero().flatten()
        idx = idx[z[idx].argsort()]
        for lo, hi in zip(idx[:-1].tolist(), idx[1:].tolist()):
            if z[hi] - z[lo] <= gap_mm:
                out += [(1 - a) * images[lo] + a * images[hi] for a in weights]
    return torch.stack(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--settings", default="0.5:2,0.5:6,0.333/0.667:6",
                    help="weights (slash separated):largest gap in mm, comma separated")
    args = ap.parse_args()
    torch.set_num_threads(2)
    settings = [None] + [(tuple(float(w) for w in s.split(":")[0].split("/")), float(s.split(":")[1]))
                         for s in args.settings.split(",")]
    rows = {}
    for seed in map(int, args.seeds.split(",")):
        train, test = load_brain_subjects(args.size, seed, QUICK["train_subjects"], QUICK["test_subjects"])
        val, trn = validation_split(len(train.images), TrainConfig(image_size=args.size), train.subjects)
        own, held = train.images[trn].float(), train.images[val].float()
        window = nb.peak_window(args.size)
        for setting in settings:
            t0 = time.time()
            images = own if setting is None else torch.cat(
                [own, between(own, train.subjects[trn], train.slices[trn], *setting)])
            maps = three_maps(test, held, distance(images, held), seed)
            row = image_row({name: nb.peaks(m, window) for name, m in maps.items()}, test) + [time.time() - t0]
            name = "the package's bank" if setting is None else (
                f"+ blends {'/'.join(f'{w:g}' for w in setting[0])} of positions <= {setting[1]:g} mm apart "
                f"({len(images)} slices)")
            rows.setdefault(name.split(" (")[0], []).append(row)
            print(f"seed {seed} {name}: {row[0]:.3f} foreign {row[-2]:.3f} ({row[-1]:.0f} s)", flush=True)
    print(f"\n{args.size}x{args.size}: image AUROC (mean over draws {args.seeds})\n")
    print_rows("bank", rows, seconds=True)


if __name__ == "__main__":
    main()
