"""Experiment (issue 26): how detectable are the registered subjects' lesions at all, and does a detector trained
on misplaced normal tissue, or on generic local intensity anomalies, alone find them?

Small U-Nets (the package's Reconstructor with skips, one output channel read as pixel logits) train on the
quick setting's training subjects to segment what was changed in a slice, half of each batch changed:

- ``lesions`` (a ceiling, not a method): the lesions of the test split's generator (``brain_lesions.draw``, the
  four kinds in turn) drawn into the training subjects' noise-free slices at the training positions, imaged as the
  test slices are (the same subjects' contrast, bias field and noise), with their exact masks as targets. The test
  split's subjects, positions and lesions are all others. Nothing normal-only knows more about these lesions.
- ``foreign`` (self-supervised, from normal slices alone; foreign patch interpolation, Tan et al. 2020, and
  CutPaste, Li et al. 2021): an irregular region (a thresholded smooth noise field inside an ellipse, 2 pixels to
  a sixth of the side across) of another training slice, taken at a random place of its brain, blended in (its
  share 0.3-1) at a random place of the slice's brain; half of the time from the slice itself. The target is the
  pixels the blend changed by more than ``brain_lesions.TOLERANCE``. No lesion kind of the generator is seen, so
  every kind in the test split is one it never saw.
- ``intensity`` (self-supervised, from normal slices alone; DRAEM, Zavrtanik et al. 2021, and natural synthetic
  anomalies, Schlüter et al. 2022): an irregular region (2 pixels to a third of the side across, soft edge) whose
  low-pass part is made darker or brighter, homogeneous, textured or blurred, its noise kept (``_intensity_one``).
  No lesion kind's shape, placement, mass effect or multiplicity is drawn.

All are scored on the quick test split exactly as the benchmark scores the Patch-GAN (image score: the largest
3x3 mean of the pixel map; the per-kind AUROCs, pixel AUROC in the brain). No test image or label is used for any
choice; the steps are fixed in advance.

    python experiments/brain_subjects_ceiling.py {lesions,foreign,intensity} [--size 64] [--steps 1500] [--crop SIDE]
        # 64x64: about 7 minutes on 2 CPU cores; --size 128 --crop 64 about as long; 4,000 steps 18-21 minutes

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse
import time

import numpy as np
import torch
from brain_ceiling import segment, train_step  # this folder's: run as a script
from brain_subjects_levers import report, smoothed_max
from scipy import ndimage

from patchgan_fast.data.datasets.brain_lesions import KINDS, TOLERANCE
from patchgan_fast.data.datasets.brain_subjects import QUICK, _Data, load_brain_subjects
from patchgan_fast.models.networks import Reconstructor


def lesioned_training_slices(size, seed, subjects, copies):
    """(images, masks) [N, 1, S, S]: every training subject's slices at the training positions, ``copies`` times
    each with one lesion (the kinds in turn), imaged as that subject's normal slices are."""
    data = _Data(size, None, None, 0.2)
    zt = data.z_train
    images, masks = [], []
    for i in range(subjects):
        items = [(k, None) for k in range(len(zt))]
        items += [(k, KINDS[(k + c + i) % len(KINDS)]) for c in range(copies) for k in range(len(zt))]
        x, _, m, _, _ = data.render(seed, 1, i, zt, items)
        images.append(x[len(zt):])
        masks.append(m[len(zt):])
    return (torch.from_numpy(np.concatenate(images).astype(np.float32))[:, None],
            torch.from_numpy(np.concatenate(masks)).float()[:, None])


def blob(rng, size, largest=None):
    """An irregular region: a thresholded smooth noise field inside an ellipse (radius 1 pixel to ``largest``, a
    twelfth of the side unless given), [S, S] bool."""
    r = np.exp(rng.uniform(np.log(1.0), np.log(largest or size / 12)))
    ry, rx = r * rng.uniform(0.6, 1.4), r * rng.uniform(0.6, 1.4)
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    theta = rng.uniform(0, np.pi)
    u = (yy * np.cos(theta) + xx * np.sin(theta)) / ry
    v = (-yy * np.sin(theta) + xx * np.cos(theta)) / rx
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), max(r / 2, 1.0))
    noise /= max(noise.std(), 1e-6)
    return np.hypot(u, v) + 0.3 * noise < 1


def foreign(x, brain, rng):
    """``x`` [B, 1, S, S] with one foreign region each (module docstring): (images, changed-pixel masks)."""
    b, _, s, _ = x.shape
    out, target = x.clone(), torch.zeros_like(x)
    for i in range(b):
        region = blob(rng, s)
        src = i if rng.random() < 0.5 else int(rng.integers(b))
        ys, xs = np.nonzero(brain[i, 0].numpy())
        sy, sx = np.nonzero(brain[src, 0].numpy())
        j, k = int(rng.integers(len(ys))), int(rng.integers(len(sy)))
        # the source shifted so that its place (sy, sx) lands on the slice's place (ys, xs)
        moved = np.roll(x[src, 0].numpy(), (ys[j] - sy[k], xs[j] - sx[k]), (0, 1))
        region = np.roll(region, (ys[j] - s // 2, xs[j] - s // 2), (0, 1)) & brain[i, 0].numpy()
        share = rng.uniform(0.3, 1.0)
        before = x[i, 0].numpy()
        after = np.where(region, (1 - share) * before + share * moved, before)
        out[i, 0] = torch.from_numpy(after.astype(np.float32))
        target[i, 0] = torch.from_numpy((np.abs(after - before) > TOLERANCE).astype(np.float32))
    return out, target


def _intensity_one(before, inside, rng):
    """One slice [S, S] with one local intensity anomaly: (image, changed pixels)."""
    s = before.shape[-1]
    ys, xs = np.nonzero(inside)
    j = int(rng.integers(len(ys)))
    region = np.roll(blob(rng, s, largest=s / 6), (ys[j] - s // 2, xs[j] - s // 2), (0, 1)) & inside
    alpha = np.clip(ndimage.gaussian_filter(region.astype(np.float64), rng.uniform(0.3, 1.5)), 0, 1)
    low = ndimage.gaussian_filter(before, 1.0)
    kind = rng.integers(4)
    if kind == 0:  # darker or brighter by 15-60 %
        new = low * (1 + rng.choice((-1, 1)) * rng.uniform(0.15, 0.6))
    elif kind == 1:  # homogeneous: the region's mean times 0.3-1.6
        new = np.full_like(low, low[region].mean() * rng.uniform(0.3, 1.6) if region.any() else 0.0)
    elif kind == 2:  # a smooth texture of 5-25 % of the brain's mean
        field = ndimage.gaussian_filter(rng.standard_normal((s, s)), rng.uniform(0.7, 2.5))
        new = low + field / max(field.std(), 1e-6) * rng.uniform(0.05, 0.25) * before[inside].mean()
    else:  # the region blurred (lost structure)
        new = ndimage.gaussian_filter(low, rng.uniform(1.5, 4.0))
    after = np.clip(before + alpha * (new - low), 0, 1)
    return after, np.abs(after - before) > TOLERANCE


def intensity(x, brain, rng):
    """``x`` [B, 1, S, S] with one local intensity anomaly each (``intensity`` in the module docstring): (images,
    changed-pixel masks). The slice's low-pass part (sigma 1 pixel) is changed inside a soft irregular region and its
    high-pass part (the noise, the finest texture) kept, so no region is told by missing noise."""
    b, _, s, _ = x.shape
    out, target = x.clone(), torch.zeros_like(x)
    for i in range(b):
        for _ in range(10):  # drawn again while it changes nothing (a faint change in a tiny region)
            after, changed = _intensity_one(x[i, 0].numpy().astype(np.float64), brain[i, 0].numpy(), rng)
            if changed.any():
                break
        out[i, 0] = torch.from_numpy(after.astype(np.float32))
        target[i, 0] = torch.from_numpy(changed.astype(np.float32))
    return out, target


def crop(x, target, brain, side, rng):
    """Crops of ``side`` pixels of each slice: around a pixel of its target where it has one, else around a brain
    pixel (a fully convolutional net trained on crops scores whole slices)."""
    s = x.shape[-1]
    xs, ts = [], []
    for i in range(len(x)):
        where = target[i, 0] > 0 if target[i].any() else brain[i, 0]
        ys, xx = np.nonzero(where.numpy())
        j = int(rng.integers(len(ys)))
        y0 = int(np.clip(ys[j] - rng.integers(side // 8, side - side // 8), 0, s - side))
        x0 = int(np.clip(xx[j] - rng.integers(side // 8, side - side // 8), 0, s - side))
        xs.append(x[i, :, y0:y0 + side, x0:x0 + side])
        ts.append(target[i, :, y0:y0 + side, x0:x0 + side])
    return torch.stack(xs), torch.stack(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("anomalies", choices=("lesions", "foreign", "intensity"))
    ap.add_argument("--size", type=int, default=QUICK["size"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--copies", type=int, default=4, help="lesioned copies of each training slice (lesions)")
    ap.add_argument("--crop", type=int, default=0, help="train on crops of this side (0: whole slices)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + 77)
    t0 = time.time()
    train, test = load_brain_subjects(size=args.size, seed=args.seed, train_subjects=QUICK["train_subjects"],
                                      test_subjects=QUICK["test_subjects"])
    if args.anomalies == "lesions":
        sick, sick_masks = lesioned_training_slices(args.size, args.seed, QUICK["train_subjects"], args.copies)
    print(f"data: {len(train.images)} training slices, {len(test.images)} test ({time.time() - t0:.0f} s)", flush=True)
    net = Reconstructor(channels=1, width=16, depth=3, skips=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    half = args.batch // 2
    for step in range(args.steps):
        idx = torch.from_numpy(rng.integers(len(train.images), size=args.batch))
        x, target = train.images[idx].clone(), torch.zeros(args.batch, 1, args.size, args.size)
        if args.anomalies == "lesions":
            j = torch.from_numpy(rng.integers(len(sick), size=half))
            x[:half], target[:half] = sick[j], sick_masks[j]
        else:
            make = foreign if args.anomalies == "foreign" else intensity
            x[:half], target[:half] = make(x[:half], train.brain[idx[:half]], rng)
        if args.crop:
            x, target = crop(x, target, train.brain[idx], args.crop, rng)
        train_step(net, opt, x, target, half, step, args.steps, t0)
    maps = segment(net, test.images)
    maps = torch.where(test.brain[:, 0], maps, maps.min())
    print(f"\n{args.anomalies}, {args.size}x{args.size}, {args.steps} steps, {time.time() - t0:.0f} s\n")
    print("| image score | image AUROC | by kind | pixel AUROC in the brain |\n|---|---|---|---|")
    report("largest 3x3 mean", smoothed_max(maps), maps, test)
    report("largest pixel", maps.flatten(1).amax(1), maps, test)


if __name__ == "__main__":
    main()
