"""Experiment (issue 5): the whole Fashion-MNIST one-class protocol on the CPU, at a short training length.

Every class: train on its 6,000 training images (5,400 for training, 600 held out as normal-only
validation data, as the benchmark's val_fraction 0.1), test on all 10,000 test images. The benchmark's
Fashion-MNIST Patch-GAN (32x32, patch 16, K = 4 phases, width 32, depth 3, default loss, lr 1e-3, batch
64) but 200 steps instead of 3,000, scored with the position weights from the held-out images and the
paper's ranking, with each error measure; raw-pixel OC-SVM (the benchmark's: nu 0.1, gamma 'scale', on
all 6,000 images) beside it.

    python experiments/fmnist_ten_classes.py [--classes 0,1] [--steps 200] [--errors mse+msgms,msgms,mse]
        [--no-ocsvm] [--cache DIR] [--seeds N] [--width 32] [--score-patches 16,8]
        # 200 steps: about 15 minutes per class on 2 idle CPU cores, 5 with one error measure

``--seeds N`` trains N models per class (training seeds 0 to N-1, the same held-out images) and adds their
ensemble: the sum of each model's scores in units of its held-out images' scores (``PatchGAN.normalize``).
``--cache`` keeps the trained models (``DIR/CLASS-STEPS.pgf``, ``DIR/CLASS-STEPS-sSEED.pgf``, ``-wWIDTH`` before the seed
when ``--width`` is not 32) for later scorings; ``--score-patches`` scores each model with the masks and patches of
every size given (K = 4 phases each; the model always trains with patch 16) and adds, per error measure, the sum of
the sizes' scores in units of their held-out images' scores (multi-scale scoring, after RIAD's masks of several cell sizes,
``PatchGANMethod.score_multiscale`` as the benchmark's Table 2 row;
the z-sum and ensemble rows then sum over the sizes too); with 2 threads training is
deterministic, so a rerun reproduces the same models and figures.

Results: experiments/results/cpu-experiment-fmnist-ten-classes.md
"""

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from scoring_scale import print_table

from patchgan_fast import PatchGAN, TrainConfig
from patchgan_fast.data.datasets import FASHION_MNIST_CLASSES, one_class_split
from patchgan_fast.evaluation import image_metrics
from patchgan_fast.evaluation.methods import OCSVMMethod, PatchGANMethod
from patchgan_fast.models.training import validation_statistics


def protocol_split(c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """(all 6,000 training images, the 5,400 to train on, the 600 held out, the 10,000 test images, their labels)."""
    tr, te, labels = one_class_split(c)
    held = torch.randperm(len(tr), generator=torch.Generator().manual_seed(0))
    return tr, tr[held[600:]], tr[held[:600]], te, labels.tolist()


def trained_model(c: int, fit_x: torch.Tensor, steps: int, cache: str, width: int = 32, seed: int = 0
                  ) -> tuple[PatchGAN, TrainConfig]:
    """The class's model and its config: loaded from ``cache`` when there, else trained (and saved there)."""
    cfg = TrainConfig(image_size=32, patch_size=16, depth=3, width=width, batch_size=64, steps=steps,
                      lr=1e-3, val_fraction=0.0, progress=False, seed=seed)
    name = f"{c}-{steps}" + (f"-w{width}" if width != 32 else "") + (f"-s{seed}" if seed else "")
    path = Path(cache) / f"{name}.pgf" if cache else None
    if path is not None and path.exists():
        return PatchGAN.load(path), cfg
    m = PatchGAN.fit(fit_x, cfg)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        m.save(path)
    return m, cfg


def print_class(c: int, res: dict, started: float) -> None:
    print(c, FASHION_MNIST_CLASSES[c], {k[1]: round(100 * v, 1) for k, v in res.items() if k[0] == c},
          f"{time.time() - started:.0f} s", flush=True)


def print_results(res: dict, classes) -> None:
    print("| method | " + " | ".join(FASHION_MNIST_CLASSES[c] for c in classes) + " | mean |")
    print_table(res, classes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--cache", default="", help="folder for the trained models (reused when present)")
    ap.add_argument("--errors", default="mse+msgms,msgms,mse", help="error measures to score with")
    ap.add_argument("--no-ocsvm", action="store_true", help="skip the OC-SVM baseline")
    ap.add_argument("--seeds", type=int, default=1, help="train this many models (seeds 0, 1, ...) and score their ensemble")
    ap.add_argument("--width", type=int, default=32, help="reconstructor width (channels of its first stage)")
    ap.add_argument("--score-patches", default="16", help="patch sizes to score with (comma-separated; 16 trains)")
    args = ap.parse_args()
    classes = [int(c) for c in args.classes.split(",")]
    patches = [int(p) for p in args.score_patches.split(",")]
    torch.set_num_threads(2)
    res = {}
    for c in classes:
        tr, fit_x, val, te, y = protocol_split(c)
        t = time.time()
        errors = args.errors.split(",")
        ensemble = dict.fromkeys(errors, 0)
        for seed in range(args.seeds):
            m, cfg = trained_model(c, fit_x, args.steps, args.cache, args.width, seed)
            z = 0
            tag = f", seed {seed}" if args.seeds > 1 else ""
            method = PatchGANMethod(cfg)
            method.model, method.held_out = m, val
            for error in errors:
                m.config = dataclasses.replace(cfg, error=error)
                validation_statistics(m, val, torch.device("cpu"), 500)
                zs = 0
                for p in patches:  # each size's scores in units of the held-out images' (AUROC unchanged)
                    s = method.score_multiscale(te, [p])
                    at = "" if p == 16 else f", patch {p}"
                    res[(c, f"patchgan, {error}{at}{tag}")] = image_metrics(s.tolist(), y)["auroc"]
                    zs = zs + s  # the multi-scale score: score_multiscale(te, patches), without scoring twice
                if len(patches) > 1:
                    sizes = "+".join(map(str, patches))
                    res[(c, f"patchgan, {error}, patches {sizes}{tag}")] = image_metrics(zs.tolist(), y)["auroc"]
                ensemble[error] = ensemble[error] + zs
                if error != "mse+msgms":
                    z = z + zs
            if "msgms" in errors and "mse" in errors:
                res[(c, f"patchgan, z(msgms) + z(mse){tag}")] = image_metrics(z.tolist(), y)["auroc"]
        if args.seeds > 1:  # the models' normalized scores summed
            for error in errors:
                res[(c, f"patchgan, {error}, ensemble of {args.seeds}")] = image_metrics(ensemble[error].tolist(), y)["auroc"]
        if not args.no_ocsvm:
            svm = OCSVMMethod(cfg).fit(tr)
            res[(c, "ocsvm")] = image_metrics(svm.score(te)[0].tolist(), y)["auroc"]
        print_class(c, res, t)
    print_results(res, classes)


if __name__ == "__main__":
    main()
