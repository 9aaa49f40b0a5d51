"""Experiment (issue 26): how much eq. 5 and the nearest-neighbour distance each weigh in a feature bank's score,
chosen on normal data alone.

A model with a feature bank sums eq. 5 and the distance, each in units of its normal validation images' scores.
On the brain data eq. 5 is near chance at the CPU's training lengths, and the even sum cost about 0.04 image AUROC
against the distance alone (``brain_subjects_patches.py``); choosing the weights on the test labels is not
allowed. ``PatchGAN.add_neighbours`` now chooses eq. 5's share w (0, 0.25, 0.5, 0.75, 1; the distance gets 1 - w)
whose sum best tells foreign patches (a square of another validation image, blended in at another place:
``neighbours.foreign_patches``) from the validation images themselves (``neighbours.choose_weights``). This
prints, for each model and share, that synthetic AUROC (the only thing the choice sees) beside the test AUROC.

    python experiments/neighbour_weights.py brain [--models patch8,patch4]   # about 1 minute per model
        # brain_subjects_levers.py's models (from its --cache, /tmp/brain-subjects-levers: run it first), quick
        # brain-mri, seed 0
    python experiments/neighbour_weights.py fmnist [--classes 0,6,8] [--cache DIR]  # about 4 minutes per class
        # fmnist_ten_classes.py's 200-step models (trained when missing), the discriminator's features, bank 1,000

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse
import dataclasses
from pathlib import Path

import torch
from brain_subjects_levers import report
from fmnist_ten_classes import protocol_split, trained_model

from patchgan_fast import PatchGAN, score_batch
from patchgan_fast.data.datasets.brain_subjects import QUICK, load_brain_subjects
from patchgan_fast.evaluation import image_metrics
from patchgan_fast.models.patchgan import FOREIGN_PATCHES
from patchgan_fast.models.schedule import validation_split
from patchgan_fast.scoring.neighbours import EQ5_SHARES, auroc, foreign_patches


def scored(model, images, batch=500):
    """(eq. 5 scores, distances) of ``images`` by a model with a bank."""
    plain = dataclasses.replace(model.score_config, neighbour_scales=None)
    with torch.inference_mode():
        eq5 = torch.cat([score_batch(model, images[i:i + batch], plain).scores for i in range(0, len(images), batch)])
        return eq5, model.neighbour_distances(images)


def shares(model, held, test_images, figures):
    """One line per share: the synthetic AUROC add_neighbours chose with, and ``figures(score)`` of the test images."""
    a, b, c, d = model.neighbour_scales
    foreign = foreign_patches(held, max(len(held), FOREIGN_PATCHES), seed=model.config.seed)
    (pv, dv), (pf, df), (pt, dt) = (scored(model, x) for x in (held, foreign, test_images))
    for w in EQ5_SHARES:
        def total(p, q):
            return w * (p - a) / b + (1 - w) * (q - c) / d
        chosen = " (chosen)" if model.neighbour_weights == (w, 1 - w) else ""
        figures(f"eq. 5 share {w}{chosen}, foreign patches {auroc(total(pv, dv), total(pf, df)):.3f}", total(pt, dt))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", choices=("brain", "fmnist"))
    ap.add_argument("--models", default="patch8,patch4")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--classes", default="0,6,8")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.data == "brain":
        train, test = load_brain_subjects(**QUICK)
        print("| model, weights | image AUROC | per kind | pixel AUROC in the brain |\n|---|---|---|---|")
        for name in args.models.split(","):
            path = Path(args.cache or "/tmp/brain-subjects-levers") / f"{name}-300.pgf"
            if not path.exists():
                raise SystemExit(f"{path} is missing: run experiments/brain_subjects_levers.py --patch "
                                 f"{name.removeprefix('patch')} first")
            model = PatchGAN.load(path)
            val, trn = validation_split(len(train.images), model.config, train.subjects)
            model.add_neighbours(train.images[trn], train.images[val], "patches")
            maps = model.patch_distance_maps(test.images)
            shares(model, train.images[val], test.images, lambda tag, s: report(f"{name}, {tag}", s, maps, test))
        return
    print("| class, weights | image AUROC |\n|---|---|")
    for c in map(int, args.classes.split(",")):
        _, fit_x, held, te, labels = protocol_split(c)
        model, _ = trained_model(c, fit_x, 200, args.cache or "/tmp/fmnist-200")
        model.config = dataclasses.replace(model.config, val_fraction=0.1)  # trained on fit_x; held out by hand
        model.add_neighbours(fit_x[:1000], held, "discriminator")
        shares(model, held, te,
               lambda tag, s: print(f"| class {c}, {tag} | {100 * image_metrics(s.tolist(), labels)['auroc']:.2f} |",
                                    flush=True))


if __name__ == "__main__":
    main()
