"""Experiment (issue 26): can the ``patches`` distance's geometry (patch side p, search radius r) be chosen on
normal data alone, as its outline and weights are?

For each (p, r) the script computes, on the quick subjects (10 bank subjects, 2 validation, 6 test), the
foreign-patch AUROC the package's ``add_neighbours`` would see (``neighbours.foreign_patches`` of the held-out
normal slices against those slices; the outline chosen on them by ``choose_outline``), and, to see what a choice
by it would do, the test figures. Nothing here uses a test label to choose.

    python experiments/patch_geometry_choice.py [--size 64] [--seeds 0,1]

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse
import time

import torch
from brain_subjects_levers import report

from patchgan_fast import TrainConfig
from patchgan_fast.data.datasets.brain_subjects import QUICK, load_brain_subjects
from patchgan_fast.models.schedule import validation_split
from patchgan_fast.scoring import neighbours as nb

CANDIDATES = {64: ((3, 1), (3, 2), (3, 3), (5, 2), (5, 3)), 128: ((3, 2), (3, 4), (5, 2), (5, 4))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    torch.set_num_threads(2)
    original = nb.patch_geometry
    print("| draw, geometry | foreign patches | image AUROC | per kind | pixel AUROC in the brain |\n|---|---|---|---|---|")
    for seed in map(int, args.seeds.split(",")):
        train, test = load_brain_subjects(args.size, seed, QUICK["train_subjects"], QUICK["test_subjects"])
        val, trn = validation_split(len(train.images), TrainConfig(image_size=args.size), train.subjects)
        bank, held, query = train.images[trn].float(), train.images[val].float(), test.images.float()
        foreign = nb.foreign_patches(held, max(len(held), 128), seed)
        for p, r in CANDIDATES[args.size]:
            t = time.perf_counter()
            nb.patch_geometry = lambda size: (p, r, 1)
            try:
                e = nb.choose_outline(nb.patch_distance_maps(held, bank, 40, 0), held, 4)
                normal, strange = (nb.patch_distances(x, bank, 40, e) for x in (held, foreign))
                maps = nb.patch_distance_maps(query, bank, 40, e)
            finally:
                nb.patch_geometry = original
            report(f"seed {seed}, p {p} r {r} outline {e} ({time.perf_counter() - t:.0f} s) | "
                   f"{nb.auroc(normal, strange):.3f}", nb.peaks(maps), maps, test)


if __name__ == "__main__":
    main()
