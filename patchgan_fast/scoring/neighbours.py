"""Nearest-neighbour feature scores: how far an image's features lie from those of the nearest normal
training images (kNN on learnt features, as DN2).

The reconstruction score (eq. 5) asks whether the model can repair an image from its context; an image
of another kind that it repairs well passes it. The distance to the nearest normal images in the model's
own feature space asks instead whether the image looks like any normal one. A
:class:`~patchgan_fast.PatchGAN` with a feature bank (``TrainConfig.neighbours``, or
:meth:`~patchgan_fast.PatchGAN.add_neighbours`) scores with both, each in units of its normal validation
images' scores, summed (experiments/results/cpu-experiment-fmnist-ten-classes.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The feature spaces: ``discriminator``, the output of its last stride-2 stage; ``bottleneck``, the
#: reconstructor's (of the whole, unmasked image); ``discriminator+bottleneck``, both unit vectors side by
#: side (scaled to unit length again), so that neighbours are near in both.
FEATURE_SPACES = ("discriminator", "bottleneck", "discriminator+bottleneck")

#: Feature maps are average-pooled to at most this many positions per side, so a bank entry has at most
#: ``channels * POOLED**2`` floats whatever the image size (identity for 32x32 Fashion-MNIST images).
POOLED = 4


def check_space(features: str) -> None:
    if features not in FEATURE_SPACES:
        raise ValueError(f"expected features one of {', '.join(FEATURE_SPACES)}, got {features!r}")


def check_bank(model: nn.Module) -> None:
    """Raises ValueError unless ``model`` has a feature bank (a config with ``neighbour_scales`` needs one)."""
    if getattr(model, "feature_bank", None) is None:
        raise ValueError(f"config.neighbour_scales is set but the model ({type(model).__name__}) has no feature bank; "
                         "give it one (PatchGAN.add_neighbours) or score without neighbour_scales")


class Embedding(nn.Module):
    """Normalized images ``[N, C, H, W]`` -> unit-length feature vectors ``[N, D]`` float32 in one of
    ``FEATURE_SPACES`` of a :class:`~patchgan_fast.PatchGAN` (it shares the model's network)."""

    def __init__(self, model: nn.Module, features: str):
        super().__init__()
        check_space(features)
        self.spaces = features.split("+")
        self.discriminator = model.discriminator if "discriminator" in self.spaces else None
        self.reconstructor = model.reconstructor if "bottleneck" in self.spaces else None

    def forward(self, x: Tensor) -> Tensor:
        parts = []
        for space in self.spaces:
            f = self.discriminator.features(x) if space == "discriminator" else self.reconstructor.encode(x)
            f = nn.functional.adaptive_avg_pool2d(f, (min(f.shape[-2], POOLED), min(f.shape[-1], POOLED)))
            parts.append(nn.functional.normalize(f.flatten(1).float(), dim=1))
        return torch.cat(parts, 1) / len(parts) ** 0.5


def mean_distances(query: Tensor, bank: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Mean Euclidean distance from every row of ``query`` [N, D] to its ``k`` nearest rows of ``bank``
    [M, D] (float32, on ``query``'s device), ``chunk`` queries at a time."""
    return torch.cat([torch.cdist(query[i:i + chunk], bank).topk(k, dim=1, largest=False).values.mean(1)
                      for i in range(0, len(query), chunk)]) if len(query) else query.new_zeros(0)


def combine(scores: Tensor, distances: Tensor, scales: tuple[float, float, float, float]) -> Tensor:
    """The image score of a model with a feature bank: ``(scores - a) / b + (distances - c) / d`` with
    ``scales = (a, b, c, d)``, the mean and standard deviation of the normal validation images' eq. 5
    scores and of their distances."""
    a, b, c, d = scales
    return (scores - a) / b + (distances.to(scores.device) - c) / d
