"""Experiment (issue 5): does decaying the learning rate to zero (cosine) give better Fashion-MNIST models
than the package's constant rate?

Protocol of ``fmnist_error_check.py`` (classes 0, 2, 4, 6; 1,350 training images, 150 held-out normal images
for the position weights, 2,000 test images), the Fashion-MNIST benchmark's Patch-GAN (``benchmark._config``:
32x32, quadrant patches, K = 4 phases, width 32, depth 3, default loss, lr 1e-3, batch 64, error msgms),
scored as shipped (position weights, paper ranking). Each seed trains both schedules, so the comparison is
paired; two seeds show how much of a difference is the seed's. No test label is used for any choice.

    python experiments/fmnist_lr_decay.py --steps 200 --seeds 0,1   # about 40 minutes on 2 cores

Results: experiments/results/cpu-experiment-fmnist-levers2.md
"""

import argparse
import dataclasses
import math
import time

import torch
from scoring_scale import CLASSES, print_table, split

import patchgan_fast.models.training as T
from patchgan_fast import PatchGAN, score_batch
from patchgan_fast.evaluation.tables import _config
from patchgan_fast.evaluation import image_metrics


def with_cosine_decay(steps: int):
    """``training.train_step`` with each step's learning rate set to lr * (1 + cos(pi * step / steps)) / 2."""
    plain = T.train_step

    def step_fn(model, recon_net, disc_net, opt_r, opt_d, x, keys, step):
        for opt in (opt_r, opt_d):
            for group in opt.param_groups:
                group["lr"] = model.config.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        return plain(model, recon_net, disc_net, opt_r, opt_d, x, keys, step)

    return step_fn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    torch.set_num_threads(2)
    plain = T.train_step
    res = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for schedule in ("constant", "cosine"):
            T.train_step = with_cosine_decay(args.steps) if schedule == "cosine" else plain
            for c in CLASSES:
                fit_x, val, te, y = split(c)
                cfg = dataclasses.replace(_config("fashion-mnist", False, args.steps, seed, 32), val_fraction=0.0)
                t = time.time()
                m = PatchGAN.fit(fit_x, cfg)
                T.validation_statistics(m, val, torch.device("cpu"), 250)
                s = torch.cat([score_batch(m, te[i:i + 500]).scores for i in range(0, len(te), 500)])
                res[(c, f"{schedule}, seed {seed}")] = image_metrics(s.tolist(), y)["auroc"]
                print(c, schedule, seed, round(100 * res[(c, f"{schedule}, seed {seed}")], 1), f"{time.time() - t:.0f} s",
                      flush=True)
    T.train_step = plain
    print_table(res, CLASSES)


if __name__ == "__main__":
    main()
