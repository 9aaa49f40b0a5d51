"""Experiment (issue 26): how far longer training takes the Patch-GAN on the rebuilt brain-mri data (quick
setting: 64x64, 12 training and 6 test subjects), with the demo's model (width 16, depth 4, patch 8, skips,
reconstruction loss), scored as shipped. Image AUROC overall and per lesion kind, pixel AUROC in the brain.

    .venv/bin/python experiments/brain_subjects_steps.py --steps 300,1500

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse
import time

from patchgan_fast import PatchGAN, TrainConfig, error_maps, score_batch
from patchgan_fast.data.datasets.brain_subjects import QUICK, load_brain_subjects
from patchgan_fast.evaluation import image_metrics, pixel_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="300,1500")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    train, test = load_brain_subjects(QUICK["size"], a.seed, QUICK["train_subjects"], QUICK["test_subjects"])
    y, sick = test.labels.tolist(), test.labels == 1
    for steps in (int(s) for s in a.steps.split(",")):
        cfg = TrainConfig(image_size=64, patch_size=8, width=16, depth=4, skips=True, loss="reconstruction",
                          steps=steps, batch_size=32, lr=1e-3, val_every=max(100, steps // 5), seed=a.seed,
                          progress=False)
        t = time.time()
        model = PatchGAN.fit(train.images, cfg)
        scores = score_batch(model, test.images).scores
        maps = error_maps(model, test.images)
        inside = test.brain[sick, 0].numpy()
        pixel = pixel_metrics([m[b] for m, b in zip(maps[sick].numpy(), inside)],
                              [t_[b] for t_, b in zip(test.lesions[sick, 0].numpy(), inside)])
        per_kind = []
        for kind in sorted(set(test.kinds) - {""}):
            sel = [i for i, k in enumerate(test.kinds) if k in ("", kind)]
            per_kind.append(f"{kind} {image_metrics([scores[i].item() for i in sel], [y[i] for i in sel])['auroc']:.3f}")
        print(f"| {steps} | {image_metrics(scores.tolist(), y)['auroc']:.3f} | {', '.join(per_kind)} | "
              f"{pixel['pixel_auroc']:.3f} | {time.time() - t:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
