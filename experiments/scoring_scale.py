"""Experiment (issue 5): does scoring with larger or multi-scale hidden regions help on Fashion-MNIST?

Trains the Patch-GAN (32x32, width 32, depth 3, 200 steps of 64, lr 1e-3) on 1,350 images of each of
the hardest classes (0, 2, 4, 6), with training patch 8 or 16, and scores 2,000 test images with
the K = 4 phases layout at patch 4, 8 and 16 (unranked sum), and with sums of those scores z-normalized
on 150 held-out normal training images (never test labels). Raw-pixel OC-SVM on the same data beside it.

    python experiments/scoring_scale.py     # about 25 minutes on 2 CPU cores

Results: experiments/results/cpu-experiment-scoring-scale.md
"""

import dataclasses
import time

import torch
from sklearn.svm import OneClassSVM

from patchgan_fast import PatchGAN, Scorer, TrainConfig
from patchgan_fast.data.datasets import one_class_split
from patchgan_fast.evaluation import image_metrics

CLASSES = (0, 2, 4, 6)


def split(c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """(1,350 training images, 150 held-out normal images, 2,000 test images, their labels) of class c."""
    tr, te, y = one_class_split(c)
    g = torch.Generator().manual_seed(0)
    tr = tr[torch.randperm(len(tr), generator=g)[:1500]]
    keep = torch.randperm(len(te), generator=g)[:2000]
    return tr[150:], tr[:150], te[keep], y[keep].tolist()


def print_table(res: dict, classes) -> None:
    """Markdown rows ``| name | AUROC per class (%) | mean |`` from ``{(class, name): auroc}``."""
    for name in dict.fromkeys(k[1] for k in res):
        vals = [res[(c, name)] for c in classes]
        print(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + f" | {100 * sum(vals) / len(vals):.2f} |")


def main() -> None:
    res = {}
    for train_patch in (8, 16):
        for c in CLASSES:
            fit_x, val, te, y = split(c)
            cfg = TrainConfig(image_size=32, patch_size=train_patch, depth=3, width=32, batch_size=64, steps=200,
                              lr=1e-3, val_fraction=0.0, progress=False, seed=0)
            t = time.time()
            m = PatchGAN.fit(fit_x, cfg)
            zs = []
            for p in (4, 8, 16):
                sc = dataclasses.replace(m.score_config, patch_size=p, layout="phases", num_copies=4).with_ranking("none")
                scorer = Scorer(m, sc, compile="none")
                ts, _ = scorer(te)
                vs, _ = scorer(val)
                res[(train_patch, c, f"p{p}")] = image_metrics(ts.tolist(), y)["auroc"]
                zs.append((ts - vs.mean()) / vs.std())
            for name, idx in (("p8+p16", [1, 2]), ("p4+p8+p16", [0, 1, 2])):
                res[(train_patch, c, name)] = image_metrics(sum(zs[i] for i in idx).tolist(), y)["auroc"]
            if train_patch == 8:
                train = torch.cat([val, fit_x])
                svm = OneClassSVM(nu=0.1, gamma="scale").fit((train.float().flatten(1) / 127.5 - 1).numpy())
                scores = -svm.decision_function((te.float().flatten(1) / 127.5 - 1).numpy())
                res[(0, c, "ocsvm")] = image_metrics(scores.tolist(), y)["auroc"]
            print(train_patch, c, {k[2]: round(v, 4) for k, v in res.items() if k[1] == c and k[0] in (train_patch, 0)},
                  round(time.time() - t), flush=True)
    for tp, name in sorted({(k[0], k[2]) for k in res}):
        vals = [res[(tp, c, name)] for c in CLASSES]
        print(f"train_patch={tp} {name}: mean {100 * sum(vals) / len(vals):.2f}", [round(100 * v, 1) for v in vals])


if __name__ == "__main__":
    main()
