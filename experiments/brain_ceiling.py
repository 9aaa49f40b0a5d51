"""Experiment (issue 5): how detectable are the brain MRI synthetic lesions at all? A supervised ceiling.

Every unsupervised model measured on the brain-mri split (the Patch-GAN, the baselines, nearest training
patch, left-right asymmetry) stays at image AUROC 0.52-0.65, against the target 0.96. This script asks
whether that is the methods or the data: a detector that *is told* what these lesions look like. A small
U-Net (the package's Reconstructor with skips, one output channel read as pixel logits) trains on the
training split's normal slices, into half of which ``insert_lesions`` puts fresh lesions at every step
(a generator seeded apart from the test split's), with the lesion masks as pixel targets. It is then
scored on the test split exactly as the benchmark scores the unsupervised methods: the image score is the
maximum (or the mean of the top 1 %) of its pixel map. No test image or test label is used in training or
for any choice; the test labels only compute the AUROCs, as for every method.

Nothing normal-only can know more about the lesions than this detector, which sees tens of thousands of
them, so its AUROC is a practical ceiling for the unsupervised methods on this data (not a strict one: a
larger detector trained longer may do better).

    python experiments/brain_ceiling.py [--size 64] [--steps 1500] [--train-copies 32]
        # 64x64: about 4 minutes on 2 CPU cores; --size 128: about 15

Results: experiments/results/cpu-experiment-brain-levers.md
"""

import argparse
import time

import torch
import torch.nn.functional as F

from patchgan_fast.data.datasets import SIZE_BINS, load_brain_mri
from patchgan_fast.data.datasets.brain_mri import insert_lesions
from patchgan_fast.evaluation import image_metrics, pixel_metrics
from patchgan_fast.models.networks import Reconstructor


def auroc_per_bin(scores: torch.Tensor, test) -> list[float]:
    """Image AUROC of the normal test images against the lesioned ones of each size bin (``SIZE_BINS``)."""
    y, bins = test.labels.tolist(), test.size_bins
    out = []
    for b, _ in SIZE_BINS:
        sel = [i for i, name in enumerate(bins) if name in ("", b)]
        out.append(image_metrics([scores[i].item() for i in sel], [y[i] for i in sel])["auroc"])
    return out


def setup(ap: argparse.ArgumentParser, width: int = 16, train_copies: int = 32):
    """What the brain experiments share: their common arguments (added to ``ap``, which may hold the
    script's own), 2 threads and the seed, the split, a Reconstructor with skips and its Adam optimizer.

    Returns (args, train, test, net, opt)."""
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=width)
    ap.add_argument("--train-copies", type=int, default=train_copies, help="augmented copies of each training slice")
    ap.add_argument("--test-copies", type=int, default=16, help="copies of each test slice (half get a lesion)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    train, test = load_brain_mri(size=args.size, seed=args.seed, train_copies=args.train_copies,
                                 test_copies=args.test_copies)
    net = Reconstructor(channels=1, width=args.width, depth=3, skips=True)
    return args, train, test, net, torch.optim.Adam(net.parameters(), lr=1e-3)


def train_step(net, opt, x, target, half: int, step: int, steps: int, t0: float) -> None:
    """Step ``step`` of ``steps`` of the segmenter on images ``x`` in [0, 1] whose first ``half`` hold the changed
    pixels ``target``: a pixel loss (changed pixels are rare: weighted up) plus an image-level loss on the map's
    maximum, both printed every 250 steps (seconds since ``t0``)."""
    logits = net(2 * x - 1)
    pixel = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(20.0))
    image = F.binary_cross_entropy_with_logits(logits.flatten(1).amax(1), (torch.arange(len(x)) < half).float())
    opt.zero_grad()
    (pixel + image).backward()
    opt.step()
    if step % 250 == 0 or step == steps - 1:
        print(f"step {step}: pixel loss {pixel.item():.4f}, image loss {image.item():.4f} ({time.time() - t0:.0f} s)",
              flush=True)


@torch.no_grad()
def segment(net, images) -> torch.Tensor:
    """The trained segmenter's pixel logits of ``images`` [N, 1, S, S] in [0, 1]: [N, S, S]."""
    net.eval()
    return torch.cat([net(2 * images[i:i + 64] - 1) for i in range(0, len(images), 64)])[:, 0]


def main() -> None:
    args, train, test, net, opt = setup(argparse.ArgumentParser())
    gen = torch.Generator().manual_seed(args.seed + 77)  # lesions for training, apart from the test split's
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(len(train.images), (args.batch,), generator=gen)
        x, brain = train.images[idx].clone(), train.brain[idx]
        target = torch.zeros_like(x)
        half = args.batch // 2
        x[:half], lesions = insert_lesions(x[:half], brain[:half], gen)
        target[:half] = lesions.float()
        train_step(net, opt, x, target, half, step, args.steps, t0)
    maps = segment(net, test.images)
    y, sick, bins = test.labels.tolist(), test.labels == 1, test.size_bins
    flat = maps.flatten(1)
    scores = {"max": flat.amax(1), "top 1 %": flat.topk(max(1, flat.shape[1] // 100), 1).values.mean(1)}
    heat, truth, inside = maps[sick].numpy(), test.lesions[sick, 0].numpy(), test.brain[sick, 0].numpy()
    px = pixel_metrics(list(heat), list(truth))
    px_brain = pixel_metrics([h[b] for h, b in zip(heat, inside)], [t[b] for t, b in zip(truth, inside)])["pixel_auroc"]
    print(f"\n{args.size}x{args.size}, {args.steps} steps, {len(test.images)} test images, {time.time() - t0:.0f} s\n")
    print("| image score | image AUROC | " + " | ".join(f"AUROC {b}" for b, _ in SIZE_BINS) + " |")
    print("|---|---|" + "---|" * len(SIZE_BINS))
    for name, s in scores.items():
        cells = [image_metrics(s.tolist(), y)["auroc"], *auroc_per_bin(s, test)]
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    print(f"\npixel AUROC {px['pixel_auroc']:.3f}, in the brain {px_brain:.3f}, pixel AUPRC {px['pixel_auprc']:.3f}")
    print("lesioned test images per bin: " + ", ".join(f"{b} {bins.count(b)}" for b, _ in SIZE_BINS))


if __name__ == "__main__":
    main()
