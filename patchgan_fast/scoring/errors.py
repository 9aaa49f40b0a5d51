"""The patch error measures (``ScoreConfig.error``): per-pixel error maps and ranked patch scores."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .. import ops
from ..ops import Plan
from ..ops.reference import infilled_reference
from .config import ERRORS
from .gms import gms_errors


def patch_scores(
    plan: Plan, error: str, error_scales: Optional[tuple[float, float]], images: Tensor, reconstructions: Tensor,
    assignment: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """(scores [B], patch errors [B, Gh, Gw]) with the ``error`` measure: the fused kernel for ``mse``;
    otherwise :func:`pixel_errors`, reduced per patch and ranked (eq. 5) by the map kernel as ``plan`` says.
    Arguments checked against ``plan`` already."""
    if error == "mse":
        return ops.scores_with(plan, images, reconstructions, assignment)
    pixels = pixel_errors(images, reconstructions, assignment, patch_size=plan.patch_size, mean=plan.mean,
                          std=plan.std, error=error, error_scales=error_scales)
    return ops.map_scores_with(plan, pixels)


def pixel_errors(
    images: Tensor,
    reconstructions: Tensor,
    assignment: Optional[Tensor],
    *,
    patch_size: int,
    mean: Optional[tuple[float, ...]] = None,
    std: Optional[tuple[float, ...]] = None,
    error: str = "mse",
    error_scales: Optional[tuple[float, float]] = None,
) -> Tensor:
    """Each pixel's error against its reconstruction in the copy that hid it: ``[B, H, W]`` float32,
    in the units of ``patch_errors`` (the mean over each patch is its patch error). ``mse``: the
    squared error of the normalized pixel, averaged over channels (eq. 2); ``msgms``: the
    :func:`~patchgan_fast.scoring.gms.gms_errors` map of the image against its in-filled reconstruction;
    ``mse+msgms``: the two maps divided by ``error_scales`` (default 1, 1) and summed.

    Args:
        images (Tensor[B, C, H, W]): as given to :func:`score_batch`.
        reconstructions (Tensor[K, B, C, H, W]), assignment (Tensor[B, Gh, Gw] or None): from a
            :class:`ScoreResult`.
        patch_size, mean, std, error, error_scales: those of the :class:`ScoreConfig` that scored them.
    """
    if error not in ERRORS:
        raise ValueError(f"unknown error {error!r}; expected one of {', '.join(ERRORS)}")
    infilled = infilled_reference(reconstructions, assignment, patch_size=patch_size)
    if error == "msgms":
        return gms_errors(images, infilled, mean=mean, std=std)
    squared = (ops.normalize(images, mean, std) - infilled.float()).square().mean(1)
    if error == "mse":
        return squared
    return combine_errors(squared, gms_errors(images, infilled, mean=mean, std=std), error_scales)


def combine_errors(squared: Tensor, structural: Tensor, error_scales: Optional[tuple[float, float]]) -> Tensor:
    """``error='mse+msgms'`` from its parts (pixel maps or patch errors, any shape): each divided by its
    entry of ``error_scales`` (None: 1 each), summed."""
    scale_mse, scale_msgms = error_scales or (1.0, 1.0)
    return squared / scale_mse + structural / scale_msgms
