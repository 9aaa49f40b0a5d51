"""Experiment (issue 26): do the patch-distance levers hold on other draws of the subjects?

``brain_subjects_patches.py`` compared its variants on one draw (seed 0: 10 bank subjects, 2 validation subjects,
6 test subjects) and found one lever it did not ship, the map in units of the maps of the 5 most similar
validation slices ("z by 5 val", 0.831 against 0.799). One AUROC on 108 test slices has a standard error of about
0.055, so this reruns the package's distance (patch 3, radius 2, outline 1, 40 slices) and that lever on fresh
draws of every subject (seeds 1-3: new anatomy, new lesions; no model needed), with two more questions about the
bank: does it gain from mirrored copies of its slices (left-right, as the atlas is symmetric), and what does
halving it (5 subjects, not 10) cost.

    python experiments/brain_subjects_draws.py [--seeds 0,1,2,3]   # about 4 minutes per draw on 2 CPU cores
    python experiments/brain_subjects_draws.py --subjects 24,16 [--size 128] --seeds 0,1
        # the package's distance alone with the full benchmark's subject counts (22 in the bank, 16 to test)

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse

import torch
import torch.nn.functional as F

from brain_subjects_levers import report, smoothed_max as smax  # this folder's: run as scripts
from brain_subjects_patches import inner, maps_for

from patchgan_fast import TrainConfig
from patchgan_fast.data.datasets.brain_subjects import QUICK, load_brain_subjects
from patchgan_fast.models.schedule import validation_split
from patchgan_fast.scoring.neighbours import describe, patch_distance_maps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--subjects", default=f"{QUICK['train_subjects']},{QUICK['test_subjects']}",
                    help="training and test subjects (the quick setting's by default; the levers only there)")
    args = ap.parse_args()
    n_train, n_test = map(int, args.subjects.split(","))
    levers = args.size == 64 and (n_train, n_test) == (QUICK["train_subjects"], QUICK["test_subjects"])
    torch.set_num_threads(2)
    print("| draw, scoring | image AUROC | per kind | pixel AUROC in the brain |\n|---|---|---|---|")
    for seed in map(int, args.seeds.split(",")):
        train, test = load_brain_subjects(args.size, seed, n_train, n_test)
        val, trn = validation_split(len(train.images), TrainConfig(image_size=args.size), train.subjects)
        bank, held, query = train.images[trn].float(), train.images[val].float(), test.images.float()
        if not levers:
            maps = patch_distance_maps(query, bank, 40)
            report(f"seed {seed}, {args.size}x{args.size}, {len(train.subjects[trn].unique())} bank subjects, "
                   f"{n_test} test subjects: the package's distance", smax(maps), maps, test)
            continue
        mt, mv = maps_for(query, bank, 40, 3, 2), maps_for(held, bank, 40, 3, 2)
        plain = inner(mt, query, 1)
        report(f"seed {seed}: the package's distance", smax(plain), plain, test)
        ref = mv[torch.cdist(describe(query), describe(held)).topk(5, 1, largest=False).indices]
        mu, sd = (F.avg_pool2d(s[:, None], 5, 1, 2)[:, 0] for s in (ref.mean(1), ref.std(1)))
        z = inner((mt - mu) / (sd + 0.1 * sd.mean()), query, 1)
        report(f"seed {seed}: z by 5 val", smax(z), z, test)
        m = inner(maps_for(query, torch.cat([bank, bank.flip(-1)]), 40, 3, 2), query, 1)
        report(f"seed {seed}: bank + its mirror images", smax(m), m, test)
        subjects = train.subjects[trn]
        half = bank[torch.isin(subjects, subjects.unique()[:5])]
        m = inner(maps_for(query, half, 40, 3, 2), query, 1)
        report(f"seed {seed}: half the bank (5 subjects)", smax(m), m, test)


if __name__ == "__main__":
    main()
