"""Experiment (issue 26): scoring levers of the demo's Patch-GAN on the rebuilt ``brain-mri`` (quick setting).

The demo's model (width 16, depth 4, skips, reconstruction loss, 300 steps, whole subjects held out for
validation) trained once per patch size (8: 26 mm holes at 3.25 mm pixels; 4: 13 mm), then scored on the test
slices in several ways, none of which looks at a test label to choose anything (the AUROCs use them):

- ``shipped``: eq. 5 with position weights and the paper's ranking, as ``score_batch`` scores;
- ``error map max`` / ``top 1 %``: the pixel error map (``error_maps``), its 3 x 3-smoothed maximum or the mean
  of its top 1 %; ``inner N``: the same inside the non-zero foreground eroded by N pixels (is the brain's
  outline what hides the lesions?);
- ``local NN <features>``: each cell of a feature map (the discriminator's last stride-2 stage; the encoder at
  1/8 and 1/2 resolution) against the nearest feature of any training image within one cell of it;
- ``error / neighbours' error``: each pixel's error in units of the errors at that pixel of the k most similar
  images (4 x 4-pooled pixels) among the validation subjects, the training images or both (mean and standard
  deviation, 5 x 5-smoothed): "how unusual is this error for an image like this one, here";
- ``eq. 5, position weights of the k most similar``: the paper's score with the package's position weights
  (1.1 m / (m_pos + 0.1 m)) taken per query from the k validation images most like it, not from all of them.

    python experiments/brain_subjects_levers.py [--patch 8,4] [--steps 300] [--cache /tmp/levers]
        # about 4 minutes per patch size on 2 CPU cores

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse
import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from patchgan_fast import PatchGAN, TrainConfig, score_batch
from patchgan_fast.data.datasets.brain_subjects import QUICK, load_brain_subjects
from patchgan_fast.evaluation.tables import brain_figures
from patchgan_fast.models.schedule import validation_split
from patchgan_fast.ops import rank_patch_errors
from patchgan_fast.scoring import error_maps

KINDS = ("tumour", "infarct", "ms", "small")


def report(name, scores, maps, test):
    r = brain_figures(scores, maps, test)
    kinds = " ".join(f"{k} {r[f'image_auroc_{k}']:.3f}" for k in KINDS)
    print(f"| {name} | {r['image_auroc']:.3f} | {kinds} | {r['pixel_auroc_brain']:.3f} |", flush=True)


def smoothed_max(maps, k=3):
    return F.avg_pool2d(maps[:, None], k, 1, k // 2).flatten(1).amax(1)


def local_nn(query, bank, radius=1):
    """[N, H, W]: squared distance of each cell of ``query`` [N, C, H, W] to the nearest cell of ``bank``
    [M, C, H, W] within ``radius`` cells."""
    h, w = query.shape[-2:]
    padded = F.pad(bank, (radius,) * 4, value=10.0)
    out = []
    for q in query:
        best = torch.full((h, w), float("inf"))
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                best = torch.minimum(best, (padded[:, :, dy:dy + h, dx:dx + w] - q).pow(2).sum(1).amin(0))
        out.append(best)
    return torch.stack(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patch", default="8,4")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cache", default="/tmp/brain-subjects-levers")
    args = ap.parse_args()
    torch.set_num_threads(2)
    train, test = load_brain_subjects(**QUICK)
    size = train.images.shape[-1]
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    for patch in (int(p) for p in args.patch.split(",")):
        config = TrainConfig(image_size=size, patch_size=patch, width=16, depth=4, skips=True, loss="reconstruction",
                             steps=args.steps, batch_size=16, lr=1e-3, val_every=100, seed=0, progress=False)
        path = Path(args.cache) / f"patch{patch}-{args.steps}.pgf"
        if path.exists():
            model = PatchGAN.load(path)
        else:
            t0 = time.perf_counter()
            model = PatchGAN.fit(train.images, config, groups=train.subjects)
            model.save(path)
            print(f"patch {patch}: trained {args.steps} steps in {time.perf_counter() - t0:.0f} s")
        val, trn = validation_split(len(train.images), config, train.subjects)
        print(f"\n### patch {patch}\n\n| scoring | image AUROC | per kind | pixel AUROC in the brain |\n|---|---|---|---|")
        with torch.inference_mode():
            em = error_maps(model, test.images)
            report("shipped (eq. 5, position weights, paper ranking)", score_batch(model, test.images).scores,
                   em, test)
            report("error map max", smoothed_max(em), em, test)
            report("error map top 1 %", em.flatten(1).topk(em[0].numel() // 100, 1).values.mean(1), em, test)
            fg = (test.images[:, 0] > 0).float()
            for e in (1, 2, 3):
                inner = em * (1 - F.max_pool2d(1 - fg[:, None], 2 * e + 1, 1, e)[:, 0])
                report(f"error map max, inner {e}", smoothed_max(inner), inner, test)

            def normed(x):
                return (x.float() - model.mean[0]) / model.std[0]

            spaces = {"discriminator": lambda x: model.discriminator.features(normed(x)),
                      "encoder 1/8": lambda x: model.reconstructor._encode(normed(x))[-2],
                      "encoder 1/2": lambda x: model.reconstructor._encode(normed(x))[1]}
            for name, f in spaces.items():
                feats = lambda x: torch.cat([F.normalize(f(x[i:i + 64]), dim=1) for i in range(0, len(x), 64)])  # noqa: E731
                near = local_nn(feats(test.images), feats(train.images[trn]))
                up = F.interpolate(near[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] * fg
                report(f"local NN, {name} ({near.shape[-1]}x{near.shape[-1]}), max", near.flatten(1).amax(1), up, test)
            raw_test, raw_train = error_maps(model, test.images, smoothing=1), error_maps(model, train.images, smoothing=1)
            describe = lambda x: F.avg_pool2d(x.float(), 4).flatten(1)  # noqa: E731
            for bank, idx in (("validation subjects", val), ("training images", trn),
                              ("both", torch.arange(len(train.images)))):
                near = torch.cdist(describe(test.images), describe(train.images[idx]))
                for k in (5, 20):
                    ref = raw_train[idx][near.topk(k, 1, largest=False).indices]
                    mu = F.avg_pool2d(ref.mean(1)[:, None], 5, 1, 2)[:, 0]
                    sd = F.avg_pool2d(ref.std(1)[:, None], 5, 1, 2)[:, 0]
                    e = F.avg_pool2d(raw_test[:, None], 3, 1, 1)[:, 0]
                    z = (e - mu) / (sd + 0.1 * sd.mean()) * fg
                    report(f"error / neighbours' error, {bank}, k {k}, max", z.flatten(1).amax(1), z, test)
            # the same at the patch grid, kept in eq. 5: position weights 1.1 m / (m_pos + 0.1 m) with m_pos the
            # mean patch error at each position of the k validation images most like the query (not of all of them)
            plain = dataclasses.replace(model.score_config, patch_weights=None)
            errors_test = score_batch(model, test.images, plain).patch_errors.double()
            errors_val = score_batch(model, train.images[val], plain).patch_errors.double()
            m = errors_val.mean()
            config = model.score_config
            near = torch.cdist(describe(test.images), describe(train.images[val]))
            for k in (5, 10, 20):
                m_pos = errors_val[near.topk(k, 1, largest=False).indices].mean(1)
                weighted = errors_test * 1.1 * m / (m_pos + 0.1 * m)
                scores = rank_patch_errors(weighted, top_weights=config.top_weights, rest_weight=config.rest_weight)
                report(f"eq. 5, position weights of the {k} most similar validation images", scores.float(), em, test)


if __name__ == "__main__":
    main()
