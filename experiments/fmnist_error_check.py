"""Experiment (issue 5): the package's patch error measures on the protocol of ``fmnist_levers2.py``.

The same models as that script's first half (classes 0, 2, 4, 6; 1,350 training images, 150 held-out normal
images, 2,000 test images; 32x32, width 32, depth 3, 200 steps of 64, lr 1e-3, quadrant patches), scored
by ``score_batch`` as shipped: position weights from the held-out images and the paper's ranking, with
``error='mse'``, ``'msgms'`` and ``'mse+msgms'`` (the weights recomputed for each measure), each without
weights; and two other combinations: the sum of both weighted patch errors (each about divided by its
normal mean at that position), and the sum of the two image scores in units of their held-out spread.

    python experiments/fmnist_error_check.py     # about 15 minutes on 2 CPU cores (models cached)

Results: experiments/results/cpu-experiment-fmnist-levers2.md
"""

import dataclasses
import os
import time

import torch
from scoring_scale import CLASSES, print_table, split

from patchgan_fast import PatchGAN, TrainConfig, score_batch
from patchgan_fast.ops.reference import rank_patch_errors
from patchgan_fast.evaluation import image_metrics
from patchgan_fast.models.training import validation_statistics

CACHE = "/tmp/fmnist_error_check"  # trained models, so that a rerun only scores


def main() -> None:
    torch.set_num_threads(2)
    os.makedirs(CACHE, exist_ok=True)
    res = {}
    for c in CLASSES:
        fit_x, val, te, y = split(c)
        cfg = TrainConfig(image_size=32, patch_size=16, depth=3, width=32, batch_size=64, steps=200, lr=1e-3,
                          val_fraction=0.0, progress=False, seed=0)
        t = time.time()
        path = os.path.join(CACHE, f"{c}.pgf")
        if os.path.exists(path):
            m = PatchGAN.load(path)
        else:
            m = PatchGAN.fit(fit_x, cfg)
            m.save(path)
        weighted_errors, z = {}, 0
        for error in ("mse", "msgms", "mse+msgms"):
            m.config = dataclasses.replace(cfg, error=error)
            validation_statistics(m, val, torch.device("cpu"), 250)
            for weighted in (True, False):
                sc = m.score_config if weighted else dataclasses.replace(m.score_config, patch_weights=None)
                r = [score_batch(m, te[i:i + 500], sc) for i in range(0, len(te), 500)]
                s = torch.cat([x.scores for x in r])
                res[(c, f"{error}{'' if weighted else ', no position weights'}")] = image_metrics(s.tolist(), y)["auroc"]
                if weighted and error != "mse+msgms":
                    weighted_errors[error] = torch.cat([x.patch_errors for x in r]) * torch.tensor(m.patch_weights)
                    z = z + m.normalize(s)
        # both measures, each weighted per position (about: divided by its normal mean there), summed per patch
        both = weighted_errors["mse"] + weighted_errors["msgms"]
        res[(c, "mse + msgms, per patch")] = image_metrics(rank_patch_errors(both, top_weights=(1.1, 1.0), rest_weight=0.0).tolist(), y)["auroc"]
        # the two measures' image scores, each in units of its held-out scores' spread, summed
        res[(c, "z(mse) + z(msgms), image scores")] = image_metrics(z.tolist(), y)["auroc"]
        print(c, {k[1]: round(100 * v, 1) for k, v in res.items() if k[0] == c}, f"{time.time() - t:.0f} s", flush=True)
    print_table(res, CLASSES)


if __name__ == "__main__":
    main()
