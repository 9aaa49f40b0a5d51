"""Experiment (issue 5): nearest-neighbour distances in the Patch-GAN's own feature spaces, alone and
added to its reconstruction score, on the whole Fashion-MNIST one-class protocol.

The reconstruction score asks "can the model repair this image from its context?"; a garment of
another class that the model in-fills well (a pullover for a coat model) passes it. Distances to the
nearest training images in a learnt feature space ask instead "does this image look like any normal
one?", the question behind the best published numbers without pretrained weights (GEOM, Deep SVDD
and DN2-style kNN); the two kinds of evidence may add.

Every class: the models and split of ``fmnist_ten_classes.py`` (200 steps, seed 0; 5,400 training
images, 600 held out, all 10,000 test images), loaded from its ``--cache`` (trained here when missing).
Per image, the feature vectors (flattened, L2-normalized):

- reconstructor bottleneck of the whole image (the encoder never saw an unmasked image in training),
- the same averaged over the K = 4 masked copies the model was trained on,
- discriminator features after its third stage (256 x 4 x 4),
- raw pixels (no network; a reference).

kNN score: mean Euclidean distance to the k nearest training images' vectors (k = 1 and 5, both
reported). "z(a) + z(b)": each score in units of the held-out images' scores (mean, standard
deviation), summed; the reconstruction score is the package's (MSGMS, position weights, paper ranking,
patch 16). Also both learnt spaces with the reconstruction score (two kNN scores, or one in the joint space
of both vectors side by side), and each learnt space with a bank of a fixed random 1,000 training images
instead of all 5,400 (what a model file carries). Nothing uses test labels.

    python experiments/fmnist_features.py --cache DIR [--classes 0,1] [--steps 200]

Results: experiments/results/cpu-experiment-fmnist-ten-classes.md
"""

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F
from fmnist_levers2 import hidden_masks
from fmnist_ten_classes import print_class, print_results, protocol_split, trained_model

from patchgan_fast import PatchGAN, score_batch
from patchgan_fast.ops.reference import normalize_reference
from patchgan_fast.evaluation import image_metrics
from patchgan_fast.scoring.neighbours import mean_distances
from patchgan_fast.models.training import validation_statistics


@torch.inference_mode()
def features(m: PatchGAN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{space: [N, D] L2-normalized vectors} for every feature space of the module docstring."""
    m.eval()
    bottleneck = lambda xn: m.reconstructor.encode(xn).flatten(1)  # noqa: E731
    out: dict[str, list] = {}
    masks = hidden_masks(x.shape[-1], 0, 0)
    for i in range(0, len(x), 500):
        xn = normalize_reference(x[i:i + 500], m.mean, m.std)
        out.setdefault("bottleneck", []).append(bottleneck(xn))
        out.setdefault("bottleneck, masked copies", []).append(
            torch.stack([bottleneck(xn.masked_fill(hid, 0.0)) for hid in masks]).mean(0))
        out.setdefault("discriminator", []).append(m.discriminator.features(xn).flatten(1))
        out.setdefault("pixels", []).append(xn.flatten(1))
    return {k: F.normalize(torch.cat(v), dim=1) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--cache", required=True, help="fmnist_ten_classes.py's model folder (DIR/CLASS-STEPS.pgf)")
    args = ap.parse_args()
    classes = [int(c) for c in args.classes.split(",")]
    torch.set_num_threads(2)
    res = {}
    for c in classes:
        t = time.time()
        _, fit_x, val, te, y = protocol_split(c)
        m, cfg = trained_model(c, fit_x, args.steps, args.cache)
        m.config = dataclasses.replace(cfg, error="msgms")
        validation_statistics(m, val, torch.device("cpu"), 500)
        rec = {name: torch.cat([score_batch(m, x[i:i + 500]).scores for i in range(0, len(x), 500)])
               for name, x in (("test", te), ("val", val))}
        z = lambda s, v: (s - v.mean()) / v.std()  # noqa: E731
        res[(c, "reconstruction (msgms, the package's score)")] = image_metrics(rec["test"].tolist(), y)["auroc"]
        ft, fv, fb = features(m, te), features(m, val), features(m, fit_x)
        for space in ft:
            for k in (1, 5):
                st, sv = mean_distances(ft[space], fb[space], k), mean_distances(fv[space], fb[space], k)
                res[(c, f"kNN {space}, k {k}")] = image_metrics(st.tolist(), y)["auroc"]
                both = z(rec["test"], rec["val"]) + z(st, sv)
                res[(c, f"z(reconstruction) + z(kNN {space}, k {k})")] = image_metrics(both.tolist(), y)["auroc"]
        # Both learnt spaces together: two kNN scores summed, or one kNN in the joint space (both unit vectors
        # side by side, the package's 'discriminator+bottleneck'); and the bank a model file could afford to
        # carry: a fixed random 1,000 of the 5,400 training images (a seeded generator, not chosen by any score).
        st = {s: mean_distances(ft[s], fb[s], 5) for s in ("discriminator", "bottleneck")}
        sv = {s: mean_distances(fv[s], fb[s], 5) for s in st}
        three = z(rec["test"], rec["val"]) + sum(z(st[s], sv[s]) for s in st)
        res[(c, "z(reconstruction) + z(kNN discriminator, k 5) + z(kNN bottleneck, k 5)")] = \
            image_metrics(three.tolist(), y)["auroc"]
        for f in (ft, fv, fb):
            f["discriminator+bottleneck"] = torch.cat([f["discriminator"], f["bottleneck"]], 1) / 2**0.5
        keep = torch.randperm(len(fit_x), generator=torch.Generator().manual_seed(0))[:1000]
        for s in ("discriminator", "bottleneck", "discriminator+bottleneck"):
            for bank, name in ((fb[s], ""), (fb[s][keep], ", bank of 1,000")):
                both = z(rec["test"], rec["val"]) + z(mean_distances(ft[s], bank, 5), mean_distances(fv[s], bank, 5))
                res[(c, f"z(reconstruction) + z(kNN {s}, k 5{name})")] = image_metrics(both.tolist(), y)["auroc"]
        print_class(c, res, t)
    print_results(res, classes)


if __name__ == "__main__":
    main()
