"""``score_batch``: mask, reconstruct, and score a batch with any reconstructor module; ``error_maps``."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from ..ops.checks import check_keys, check_model_output, raise_if_not_finite
from .config import ScoreConfig, ScoreResult, default_forward_batch
from .errors import patch_scores, pixel_errors
from .neighbours import check_bank, combine, combine_patches, filled, patch_peaks, peak_window


def _model_dtype_device(model: nn.Module) -> tuple[Optional[torch.dtype], Optional[torch.device]]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return None, None


def score_batch(
    model: nn.Module, images: Tensor, config: Optional[ScoreConfig] = None, *, keys: Optional[Tensor] = None
) -> ScoreResult:
    """Scores a batch: K masked copies -> reconstructor -> fused patch errors and ranked scores.

    Runs the model as it is (on chunks of :func:`default_forward_batch` copies) and returns every
    intermediate (masked copies, reconstructions); for
    throughput over many batches use :class:`~patchgan_fast.Scorer`, which returns the same scores.

    Args:
        model: any module mapping ``[N, C, H, W] -> [N, C, H, W]``; run in eval mode under
            ``torch.inference_mode`` (its training flag is restored afterwards).
        images (Tensor[B, C, H, W]): uint8, or float in [0, 1], on the model's device.
        config: masking and ranking; default ``model.score_config`` if the model has one, else
            ``ScoreConfig()``.
        keys (Tensor[B] int64, optional): per-image mask keys (layout ``'random'``); default zeros,
            so a score never depends on the batch an image is in.

    Returns:
        ScoreResult
    """
    if config is None:
        config = getattr(model, "score_config", None) or ScoreConfig()
    if not isinstance(config, ScoreConfig):
        raise TypeError(f"expected config as a ScoreConfig, got {type(config).__name__}")
    param_dtype, param_device = _model_dtype_device(model)
    if isinstance(images, Tensor) and param_device is not None and param_device != images.device:
        raise ValueError(f"images are on {images.device} but the model's parameters on {param_device}; move one of them")
    ops.check_images(images)
    if keys is None:
        keys = torch.zeros(images.shape[0], dtype=torch.int64, device=images.device)
    check_keys(keys, images.shape[0], images.device)
    plan = config.plan(images.shape, images.device, param_dtype or torch.float32)
    assignment = ops.assign_with(plan, keys)  # computed once, shared by the masks op and the score kernel
    masked = ops.mask_with(plan, images, keys, assignment)
    k, b = masked.shape[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outs = [model(c) for c in masked.flatten(0, 1).split(default_forward_batch(masked.device))]
            out = torch.cat(outs) if len(outs) > 1 and all(isinstance(o, Tensor) for o in outs) else outs[0]
    finally:
        model.train(was_training)
    check_model_output(out, (k * b, *masked.shape[2:]), k)
    recon = out.unflatten(0, (k, b))
    scores, errors = patch_scores(plan, config.error, config.error_scales, images, recon, assignment)
    distances = None
    if config.neighbour_scales is not None:
        check_bank(model)
        if getattr(model.config, "neighbours", None) == "patches":  # the distance maps give the patches' parts too
            places = patch_peaks(model.patch_distance_maps(images), model.patch_window or
                                 peak_window(min(images.shape[-2:])), config.patch_size)
            distances = places.flatten(1).amax(1)
            errors = combine_patches(errors, places, config.neighbour_scales, config.neighbour_weights,
                                     plan.patch_weights)
        else:
            distances = model.neighbour_distances(images)
        scores = combine(scores, distances, config.neighbour_scales, config.neighbour_weights)
    raise_if_not_finite(scores)
    return ScoreResult(scores=scores, patch_errors=errors, assignment=assignment, masked=masked, reconstructions=recon,
                       neighbour_distances=distances)


def default_smoothing(patch_size: int) -> int:
    """The window of :func:`error_maps`: about half a patch, odd (patch 4 -> 3, 8 -> 5, 16 -> 9)."""
    return (patch_size // 2) | 1


def error_maps(
    model: nn.Module, images: Tensor, config: Optional[ScoreConfig] = None, *, keys: Optional[Tensor] = None,
    smoothing: Optional[int] = None, batch: int = 64, patch_maps: Optional[Tensor] = None,
) -> Tensor:
    """Localization maps: :func:`pixel_errors` averaged over a ``smoothing`` x ``smoothing`` window
    (default :func:`default_smoothing` of the patch size; 1: no smoothing). ``[B, H, W]`` float32 on
    the images' device; ``batch`` images at a time go to the model's device, so the images may stay
    in CPU memory.

    Finer than the patch-error grid: on the brain MRI benchmark these maps raised pixel AUROC from
    0.77 (patch errors, nearest-upsampled) to 0.87 (experiments/results/cpu-experiment-brain-levers.md).

    A model whose score adds the ``patches`` nearest-neighbour term (``config.neighbour_scales`` set and
    ``model.config.neighbours == 'patches'``) maps both parts of its score, each in its units and with its weight
    (``config.neighbour_weights``): the errors divided by the spread of the validation images' eq. 5 scores,
    plus its patch distance map (:meth:`~patchgan_fast.PatchGAN.patch_distance_maps`), each pixel the larger of
    its own and the mean over ``model.map_window`` x ``model.map_window`` pixels
    (:func:`~patchgan_fast.scoring.neighbours.filled`: the window chosen on normal validation images; it fills
    the flat inside of a lesion whose rim alone the patches find), divided by the spread of their distances;
    ``patch_maps`` [B, H, W]: those distance maps when the caller has them already (not filled; they are not
    computed again). Where eq. 5's weight is 0 the maps are the distance's alone, and nothing is reconstructed.
    """
    return maps_and_scores(model, images, config, keys=keys, smoothing=smoothing, batch=batch,
                           patch_maps=patch_maps, scores=False)[0]


def maps_and_scores(
    model: nn.Module, images: Tensor, config: Optional[ScoreConfig] = None, *, keys: Optional[Tensor] = None,
    smoothing: Optional[int] = None, batch: int = 64, patch_maps: Optional[Tensor] = None, scores: bool = True,
) -> tuple[Tensor, Optional[Tensor]]:
    """:func:`error_maps` and the eq. 5 scores [B] of the same reconstructions (without a feature bank's term),
    for callers that need both without reconstructing twice; the other arguments are :func:`error_maps`'.
    ``scores=False``: the caller does not need eq. 5's scores; where the maps do not need the reconstructions either
    (a ``patches`` score that weighs eq. 5 0) nothing is reconstructed and the scores returned are None."""
    if config is None:
        config = getattr(model, "score_config", None) or ScoreConfig()
    scales = config.neighbour_scales if isinstance(config, ScoreConfig) else None
    weights = config.neighbour_weights if isinstance(config, ScoreConfig) else None
    patches = scales is not None and getattr(getattr(model, "config", None), "neighbours", None) == "patches"
    if isinstance(config, ScoreConfig):  # the reconstructions' part needs the reconstructions only
        config = dataclasses.replace(config, neighbour_scales=None)
    k = default_smoothing(config.patch_size) if smoothing is None else smoothing
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ValueError(f"expected smoothing a positive odd int, got {k!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"expected batch a positive int, got {batch!r}")
    ops.check_images(images)
    if patch_maps is not None and (not patches or tuple(patch_maps.shape) != (len(images), *images.shape[-2:])):
        raise ValueError(f"patch_maps are for a model with a patches bank scored with its units, one [H, W] map per "
                         f"image: expected {(len(images), *images.shape[-2:])}, got {tuple(patch_maps.shape)}"
                         + ("" if patches else " for a score without the patches term"))
    device = _model_dtype_device(model)[1] or images.device
    reconstructs = scores or not (patches and weights[0] == 0)
    out, eq5 = [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device)
        e = 0.0
        if reconstructs:
            part = None if keys is None else keys[i:i + batch].to(device)
            r = score_batch(model, x, config, keys=part)
            eq5.append(r.scores.to(images.device))
            e = pixel_errors(x, r.reconstructions, r.assignment, patch_size=config.patch_size, mean=config.mean,
                             std=config.std, error=config.error, error_scales=config.error_scales)
            if k > 1:
                e = nn.functional.avg_pool2d(e[:, None], k, 1, k // 2, count_include_pad=False)[:, 0]
        if patches:
            near = model.patch_distance_maps(x) if patch_maps is None else patch_maps[i:i + batch]
            near = filled(near.to(device), getattr(model, "map_window", 1))
            e = weights[0] * e / scales[1] + weights[1] * near / scales[3]
        out.append(e.to(images.device))
    return torch.cat(out), torch.cat(eq5) if reconstructs else None
