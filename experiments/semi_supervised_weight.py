"""The Patch-GAN with an unlabelled pool: which weight of the pool term (``TrainConfig.unlabelled_weight``), and
whether to use the pool at all, chosen without labels.

For each weight (0 = the one-class model, trained on the same labelled images) the Patch-GAN is trained on the
labelled normals and 90 % of the pool; the choice is made on :func:`~patchgan_fast.models.sagan.pool_separation`
of the held-out 10 % of the pool from the model's held-out normal images (images neither trained on: no labels
used). The test AUROC is printed beside it, for the record only.

    .venv/bin/python experiments/semi_supervised_weight.py --dataset brain-mri --steps 300
    .venv/bin/python experiments/semi_supervised_weight.py --dataset fashion-mnist --classes 0,6 --steps 200
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from patchgan_fast.evaluation.metrics import image_metrics
from patchgan_fast.evaluation.tables import _config
from patchgan_fast.models import PatchGAN
from patchgan_fast.models.sagan import pool_separation
from patchgan_fast.models.schedule import validation_split
from patchgan_fast.scoring import Scorer


def _scores(model, images):
    scorer = Scorer(model, compile="none")
    return torch.cat([scorer(images[i:i + 256])[0].cpu() for i in range(0, len(images), 256)])


def groups(dataset: str, classes, seed: int, size: int):
    """(name, labelled, pool, test, test labels) per group of the semi-supervised protocol (--quick sizes)."""
    if dataset == "brain-mri":
        from patchgan_fast.data.datasets import brain_mri_pool, load_brain_mri

        train, test = load_brain_mri(size=size, seed=seed, train_copies=2, test_copies=4)
        pool = brain_mri_pool(size, None, seed, copies=2)
        yield "brain-mri", train.images, pool.images, test.images, test.labels.tolist()
        return
    from patchgan_fast.data.datasets import semi_supervised_split

    for c in classes:
        labelled, pool, _, test_x, test_y = semi_supervised_split(c, 500, 0.6, seed)
        keep = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(seed + 1))[:1000]
        yield f"class {c}", labelled, pool, test_x[keep], test_y[keep].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["brain-mri", "fashion-mnist"], default="brain-mri")
    p.add_argument("--classes", default="0,6")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--weights", default="0,0.01,0.1,1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    base = _config(a.dataset, True, a.steps, a.seed, a.size)
    weights = [float(w) for w in a.weights.split(",")]
    print("| data | weight | pool separation (held-out pool vs held-out normals) | test AUROC | seconds |")
    print("|---|---|---|---|---|")
    for name, labelled, pool, test_x, test_y in groups(a.dataset, [int(c) for c in a.classes.split(",")], a.seed, a.size):
        probe_idx, pool_idx = validation_split(len(pool), base)
        for w in weights:
            cfg = dataclasses.replace(base, unlabelled_weight=w)
            t0 = time.perf_counter()
            model = PatchGAN.fit(labelled, cfg, unlabelled=pool[pool_idx] if w > 0 else None)
            val_idx, _ = validation_split(len(labelled), cfg)
            sep = pool_separation(_scores(model, labelled[val_idx]), _scores(model, pool[probe_idx]))
            auroc = image_metrics(_scores(model, test_x).tolist(), test_y)["auroc"]
            print(f"| {name} | {w:g} | {sep:.3f} | {auroc:.3f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
