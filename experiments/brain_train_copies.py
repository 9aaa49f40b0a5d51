"""Experiment (issue 5): does the brain MRI Patch-GAN generalize better with more augmented training copies?

The brain-mri split has 64 training slices (one subject); the full benchmark shows each ``train_copies = 4``
times, each copy with its own rotation, scaling, intensity scale, bias field and noise. At thousands of steps
of 32 images the model sees every one of those 256 images hundreds of times and may learn them rather than
normal anatomy under any pose. This trains the benchmark's brain Patch-GAN (``benchmark._config``, full-run
settings) on the same slices with more copies, for the same number of steps, and scores one test split
(16 copies per test slice, 192 images, half lesioned; standard error of one image AUROC about 0.04).
No test label is used for any choice.

    python experiments/brain_train_copies.py --steps 800 --copies 4,32   # about 20 minutes on 2 cores

Results: experiments/results/cpu-experiment-brain-levers.md
"""

import argparse
import time

import torch

from patchgan_fast import PatchGAN, error_maps, score_batch
from patchgan_fast.evaluation.tables import _config
from patchgan_fast.data.datasets import load_brain_mri
from patchgan_fast.evaluation import image_metrics, pixel_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--copies", default="4,32", help="training copies per slice to compare (comma-separated)")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)
    _, test = load_brain_mri(size=args.size, test_copies=16)
    y, sick = test.labels.tolist(), test.labels == 1
    bins = test.size_bins
    print("| training copies per slice | training images | image AUROC | AUROC small / medium / large | pixel AUROC "
          "| pixel AUROC in the brain | seconds |\n|---|---|---|---|---|---|---|", flush=True)
    for copies in (int(c) for c in args.copies.split(",")):
        train, _ = load_brain_mri(size=args.size, train_copies=copies, test_copies=16)
        t0 = time.time()
        model = PatchGAN.fit(train.images, _config("brain-mri", False, args.steps, 0, args.size))
        scores = torch.cat([score_batch(model, test.images[i:i + 64]).scores for i in range(0, len(test.images), 64)])
        maps = torch.cat([error_maps(model, test.images[i:i + 64]) for i in range(0, len(test.images), 64)])
        by_bin = []
        for b in ("small", "medium", "large"):
            sel = [i for i, name in enumerate(bins) if name in ("", b)]
            by_bin.append(image_metrics([scores[i].item() for i in sel], [y[i] for i in sel])["auroc"])
        heat, truth, inside = maps[sick].numpy(), test.lesions[sick, 0].numpy(), test.brain[sick, 0].numpy()
        px = pixel_metrics(list(heat), list(truth))["pixel_auroc"]
        px_brain = pixel_metrics([h[m] for h, m in zip(heat, inside)], [t[m] for t, m in zip(truth, inside)])["pixel_auroc"]
        print(f"| {copies} | {len(train.images)} | {image_metrics(scores.tolist(), y)['auroc']:.3f} | "
              + " / ".join(f"{v:.3f}" for v in by_bin) + f" | {px:.3f} | {px_brain:.3f} | {time.time() - t0:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
