"""Experiment (issue 24): what a lighter reconstructor costs in detection, for the 256x256 throughput target.

The default 256x256 model (``TrainConfig.for_image_size(256)``, width 32) costs 21.6 GFLOP per 256x256x3 copy;
K = 4 copies at 5,000 images/s is 431 TFLOP/s. The reconstructor's cost grows with the square of ``width`` (its
full-resolution layers dominate): width 24 costs 13.0 GFLOP, width 16 6.7 (``--flops`` prints them). This trains
the Fashion-MNIST benchmark's Patch-GAN (``evaluation.tables._config``) at each width on the protocol of
``fmnist_lr_decay.py`` (classes 0, 2, 4, 6; 1,350 training images, 150 held-out normal images for the position
weights, 2,000 test images), scored as shipped, same seed for every width, and prints the image AUROC.

    python experiments/lighter_model.py --steps 200            # about 30 minutes on 2 cores
    python experiments/lighter_model.py --flops                # GFLOP per 256x256x3 copy per width

Results: experiments/results/cpu-experiment-lighter-model.md
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from scoring_scale import CLASSES, print_table, split

import patchgan_fast.models.training as T
from patchgan_fast import PatchGAN, score_batch
from patchgan_fast.evaluation import image_metrics
from patchgan_fast.evaluation.tables import _config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from pipeline_common import gflop_per_copy  # noqa: E402

WIDTHS = (32, 24, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flops", action="store_true", help="only print GFLOP per 256x256x3 copy per width")
    args = ap.parse_args()
    for w in WIDTHS:
        g = gflop_per_copy(256, 3, w)
        print(f"width {w}: {g:.1f} GFLOP per 256x256x3 copy; K = 4 at 5,000 images/s = {g * 4 * 5000 / 1e3:.0f} TFLOP/s")
    if args.flops:
        return
    torch.set_num_threads(2)
    res = {}
    for w in WIDTHS:
        for c in CLASSES:
            fit_x, val, te, y = split(c)
            cfg = dataclasses.replace(_config("fashion-mnist", False, args.steps, args.seed, 32), val_fraction=0.0,
                                      width=w)
            t = time.time()
            m = PatchGAN.fit(fit_x, cfg)
            T.validation_statistics(m, val, torch.device("cpu"), 250)
            s = torch.cat([score_batch(m, te[i:i + 500]).scores for i in range(0, len(te), 500)])
            res[(c, f"width {w}")] = image_metrics(s.tolist(), y)["auroc"]
            print(c, w, round(100 * res[(c, f"width {w}")], 1), f"{time.time() - t:.0f} s", flush=True)
    print_table(res, CLASSES)


if __name__ == "__main__":
    main()
