"""Experiment (issue 5): more Fashion-MNIST levers from QUALITY-NOTES, on the protocol of ``fmnist_levers.py``.

Classes 0, 2, 4, 6; 1,350 training images, 150 held-out normal images, 2,000 test images; 32x32, width 32,
depth 3, 200 steps of 64, lr 1e-3, quadrant patches (patch 16, K = 4 phases), the default loss. Every
scoring below divides each patch value by its mean over the held-out normal images at the same position
and applies the paper's ranking (1.1, 1.0), the package's best scoring so far
(``cpu-experiment-fmnist-levers.md``); "MSE" is the package's patch error.

Scoring levers, from the same model:
- mask ensemble: the K = 4 quadrant copies, and again with the quadrant grid shifted by 8 pixels down,
  right and both (a pixel is then filled in from four different contexts); pixel errors averaged;
- flip ensemble: the image and its mirror image, errors of the mirror flipped back and averaged;
- MSGMS: RIAD's multi-scale gradient-magnitude similarity (1 - GMS at scales 1, 1/2, 1/4, 1/8) between
  the image and the in-filled image instead of the squared error;
- discriminator features: squared residual of the discriminator's second-stage features between the
  image and the in-filled image (f-AnoGAN's feature residual, per patch);
- z-sums of those with the MSE score (z from the held-out images).

Training lever: the same with mirror-image augmentation (the training set plus its mirror images).

    python experiments/fmnist_levers2.py     # about 40 minutes on 2 CPU cores

Results: experiments/results/cpu-experiment-fmnist-levers2.md
"""

import time

import torch
import torch.nn.functional as F
from scoring_scale import CLASSES, print_table, split

from patchgan_fast import PatchGAN, TrainConfig, score_batch
from patchgan_fast.ops.reference import normalize_reference
from patchgan_fast.evaluation import image_metrics
from patchgan_fast.models.training import validation_statistics

P = 16
OFFSETS = ((0, 0), (8, 8), (0, 8), (8, 0))


def hidden_masks(size: int, dy: int, dx: int) -> torch.Tensor:
    """[4, size, size] bool: copy k hides the cells of a P-grid shifted by (dy, dx) whose (row, column)
    parity is k; the four copies hide every pixel exactly once."""
    r = (torch.arange(size) + dy) // P % 2
    c = (torch.arange(size) + dx) // P % 2
    phase = r[:, None] * 2 + c[None, :]
    return torch.stack([phase == k for k in range(4)])


@torch.inference_mode()
def infill(m: PatchGAN, x: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalized images [B, 1, H, W], in-filled images: each pixel from the copy that hid it)."""
    m.eval()
    xn = normalize_reference(x, m.mean, m.std)
    masks = hidden_masks(x.shape[-1], dy, dx)
    out = torch.zeros_like(xn)
    for hid in masks:
        out += torch.where(hid, m.reconstructor(xn.masked_fill(hid, 0.0)), 0.0)
    return xn, out


def gms_error(a: torch.Tensor, b: torch.Tensor, c: float = 0.0026) -> torch.Tensor:
    """RIAD's MSGMS error map [B, H, W]: mean over scales 1, 1/2, 1/4, 1/8 of 1 - GMS (Prewitt
    gradient magnitudes, images in [0, 1]), each upsampled to full size."""
    kx = torch.tensor([[1.0, 0, -1], [1, 0, -1], [1, 0, -1]]) / 3
    k = torch.stack([kx, kx.T])[:, None]
    out = torch.zeros(a.shape[0], *a.shape[-2:])
    for s in range(4):
        aa, bb = (F.avg_pool2d(a, 2**s), F.avg_pool2d(b, 2**s)) if s else (a, b)
        ga = F.conv2d(aa, k, padding=1).square().sum(1, keepdim=True).sqrt()
        gb = F.conv2d(bb, k, padding=1).square().sum(1, keepdim=True).sqrt()
        gms = (2 * ga * gb + c) / (ga.square() + gb.square() + c)
        out += F.interpolate(1 - gms, size=a.shape[-2:], mode="bilinear", align_corners=False)[:, 0] / 4
    return out


@torch.inference_mode()
def disc_residual(m: PatchGAN, a: torch.Tensor, b: torch.Tensor, stage: int = 5) -> torch.Tensor:
    """Squared residual of the discriminator's features after its first ``stage`` modules, channel mean,
    upsampled to [B, H, W]."""
    f = m.discriminator.net[:stage]
    r = (f(a) - f(b)).square().mean(1, keepdim=True)
    return F.interpolate(r, size=a.shape[-2:], mode="nearest")[:, 0]


def maps(m: PatchGAN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pixel maps [N, H, W] of every scoring lever."""
    out: dict[str, list] = {}
    for i in range(0, len(x), 250):
        xb = x[i:i + 250]
        per = {}
        for dy, dx in OFFSETS:
            xn, rec = infill(m, xb, dy, dx)
            per[(dy, dx)] = (xn - rec).square()[:, 0]
            if (dy, dx) == (0, 0):
                lo, sd = m.mean[0], m.std[0]
                per["gms"] = gms_error(xn * sd + lo, rec * sd + lo)
                per["disc"] = disc_residual(m, xn, rec)
        xn, rec = infill(m, xb.flip(-1), 0, 0)
        flip = (xn - rec).square()[:, 0].flip(-1)
        shifts = torch.stack([per[o] for o in OFFSETS]).mean(0)
        for name, v in (("mse", per[(0, 0)]), ("mse, 4 mask grids", shifts), ("mse, flip", (per[(0, 0)] + flip) / 2),
                        ("mse, 4 mask grids + flip", (4 * shifts + flip) / 5), ("msgms", per["gms"]),
                        ("disc features", per["disc"])):
            out.setdefault(name, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


def rank(patch: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Position-normalized patch values, paper ranking (1.1, 1.0)."""
    top = (patch / normal.mean(0)).flatten(1).topk(2, dim=1).values
    return 1.1 * top[:, 0] + top[:, 1]


def scores(m: PatchGAN, te: torch.Tensor, val: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{lever: (test scores, held-out normal scores)}."""
    mt, mv = maps(m, te), maps(m, val)
    out = {}
    for name in mt:
        pt, pv = F.avg_pool2d(mt[name][:, None], P)[:, 0], F.avg_pool2d(mv[name][:, None], P)[:, 0]
        out[name] = (rank(pt, pv), rank(pv, pv))
    z = lambda s, v: (s - v.mean()) / v.std()  # noqa: E731
    for other in ("msgms", "disc features", "mse, 4 mask grids + flip"):
        (st, sv), (ot, ov) = out["mse"], out[other]
        out[f"z(mse) + z({other})"] = (z(st, sv) + z(ot, ov), z(sv, sv) + z(ov, ov))
    # the package's own score (floored position weights; a check that "mse" reproduces it)
    out["package score_batch"] = (torch.cat([score_batch(m, te[i:i + 500]).scores for i in range(0, len(te), 500)]), None)
    return out


def main() -> None:
    torch.set_num_threads(2)
    res = {}
    for aug in (False, True):
        for c in CLASSES:
            fit_x, val, te, y = split(c)
            if aug:
                fit_x = torch.cat([fit_x, fit_x.flip(-1)])
            cfg = TrainConfig(image_size=32, patch_size=P, depth=3, width=32, batch_size=64, steps=200, lr=1e-3,
                              val_fraction=0.0, progress=False, seed=0)
            t = time.time()
            m = PatchGAN.fit(fit_x, cfg)
            tag = "mirror-augmented training, " if aug else ""
            # the package's position weights come from validation images; give them the held-out ones
            validation_statistics(m, val, torch.device("cpu"), 250)
            for name, (s, _) in scores(m, te, val).items():
                res[(c, tag + name)] = image_metrics(s.tolist(), y)["auroc"]
            print(c, aug, {k[1]: round(100 * v, 1) for k, v in res.items() if k[0] == c}, f"{time.time() - t:.0f} s",
                  flush=True)
    print_table(res, CLASSES)


if __name__ == "__main__":
    main()
