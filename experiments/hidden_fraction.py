"""Experiment (issue 5): does hiding more of each copy help on Fashion-MNIST?

Same protocol as ``scoring_scale.py`` (classes 0, 2, 4, 6; 1,350 training images, 200 steps of 64;
2,000 test images; unranked sum of patch errors), but the model is trained with the seeded random
layout at K = 2 (each copy hides half of the 8x8 patches) for its scoring-layout half batches, and
scored with random K = 2 (50 % hidden) and phases K = 4 (25 % hidden).

    python experiments/hidden_fraction.py     # about 13 minutes on 2 CPU cores

Results: experiments/results/cpu-experiment-scoring-scale.md
"""

import dataclasses
import time

import torch

from scoring_scale import CLASSES, split

from patchgan_fast import PatchGAN, Scorer, TrainConfig
from patchgan_fast.evaluation import image_metrics


def main() -> None:
    res = {}
    for c in CLASSES:
        fit_x, _, te, y = split(c)
        cfg = TrainConfig(image_size=32, patch_size=8, depth=3, width=32, batch_size=64, steps=200, lr=1e-3,
                          layout="random", num_copies=2, val_fraction=0.0, progress=False, seed=0)
        t = time.time()
        m = PatchGAN.fit(fit_x, cfg)
        for name, layout, k in (("random K=2", "random", 2), ("phases K=4", "phases", 4)):
            sc = dataclasses.replace(m.score_config, layout=layout, num_copies=k).with_ranking("none")
            keys = torch.arange(len(te), dtype=torch.int64)
            res[(c, name)] = image_metrics(Scorer(m, sc, compile="none")(te, keys)[0].tolist(), y)["auroc"]
        print(c, {k[1]: round(v, 4) for k, v in res.items() if k[0] == c}, round(time.time() - t), flush=True)
    for name in ("random K=2", "phases K=4"):
        vals = [res[(c, name)] for c in CLASSES]
        print(f"{name}: mean {100 * sum(vals) / len(vals):.2f}", [round(100 * v, 1) for v in vals])


if __name__ == "__main__":
    main()
