"""Experiment (issue 5): scoring levers for the Fashion-MNIST Patch-GAN, from one trained model per class.

Same protocol as ``scoring_scale.py`` (classes 0, 2, 4, 6; 1,350 training images, 150 held-out normal
images, 2,000 test images; 32x32, width 32, depth 3, 200 steps of 64, lr 1e-3), training with quadrant
patches (patch 16, K = 4 phases) and the package's default loss (reconstruction + 0.01 adversarial), and
scoring the test images several ways:

- the unranked patch-error sum and the paper's ranking (the package's eq. 5);
- patch errors divided by the mean held-out normal error at the same patch position (or weighted by
  2m / (m_pos + m), which stays bounded where normal errors are near zero), then summed or ranked;
- the discriminator's verdict on the K in-filled images, -mean D(R(z)), alone and z-normalized plus the sum;
- the maximum of the pixel error map (``error_maps``).

The held-out images are normal training images; no test label is used for any choice.

    python experiments/fmnist_levers.py     # about 17 minutes on 2 CPU cores

Results: experiments/results/cpu-experiment-fmnist-levers.md
"""

import time

import torch
from scoring_scale import CLASSES, print_table, split

from patchgan_fast import PatchGAN, TrainConfig, error_maps, score_batch
from patchgan_fast.evaluation import image_metrics


def parts(model: PatchGAN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(patch errors [N, Gh, Gw], paper-ranked scores [N], -mean discriminator logit over the K in-filled copies [N])."""
    errs, ranked, disc = [], [], []
    for i in range(0, len(x), 250):
        r = score_batch(model, x[i:i + 250])
        errs.append(r.patch_errors)
        ranked.append(r.scores)
        k, b = r.reconstructions.shape[:2]
        with torch.inference_mode():
            logits = model.discriminator(r.reconstructions.flatten(0, 1).float())
        disc.append(-logits.flatten(1).mean(1).view(k, b).mean(0))
    return torch.cat(errs), torch.cat(ranked), torch.cat(disc)


def ranked(e: torch.Tensor) -> torch.Tensor:
    """The paper's eq. 5 weights (1.1, 1.0 on the two largest) on per-patch values [N, Gh, Gw]."""
    top = e.flatten(1).topk(2, dim=1).values
    return 1.1 * top[:, 0] + top[:, 1]


def shrunk(va_e: torch.Tensor) -> torch.Tensor:
    """Per-position weights 2m / (m_pos + m) from held-out normal patch errors (m: their overall mean):
    1 where a position's normal error is average, never above 2 where it is near zero."""
    m_pos = va_e.mean(0)
    return 2 * m_pos.mean() / (m_pos + m_pos.mean())


def main() -> None:
    res = {}
    for c in CLASSES:
        fit_x, val, te, y = split(c)
        cfg = TrainConfig(image_size=32, patch_size=16, depth=3, width=32, batch_size=64, steps=200, lr=1e-3,
                          val_fraction=0.0, progress=False, seed=0)
        t = time.time()
        m = PatchGAN.fit(fit_x, cfg)
        te_e, te_rank, te_d = parts(m, te)
        va_e, _, va_d = parts(m, val)
        te_sum, va_sum = te_e.flatten(1).sum(1), va_e.flatten(1).sum(1)
        z = lambda s, v: (s - v.mean()) / v.std()  # noqa: E731
        scores = {
            "patch sum": te_sum,
            "paper ranking": te_rank,
            "position-normalized sum": (te_e / va_e.mean(0)).flatten(1).sum(1),
            "position-normalized paper ranking": ranked(te_e / va_e.mean(0)),
            "position weights 2m/(m_pos + m), sum": (te_e * shrunk(va_e)).flatten(1).sum(1),
            "position weights 2m/(m_pos + m), paper ranking": ranked(te_e * shrunk(va_e)),
            "discriminator": te_d,
            "z(sum) + z(discriminator)": z(te_sum, va_sum) + z(te_d, va_d),
            "pixel map max": error_maps(m, te).flatten(1).amax(1),
        }
        for name, s in scores.items():
            res[(c, name)] = image_metrics(s.tolist(), y)["auroc"]
        print(c, {k[1]: round(100 * v, 1) for k, v in res.items() if k[0] == c}, f"{time.time() - t:.0f} s", flush=True)
    print_table(res, CLASSES)


if __name__ == "__main__":
    main()
