"""``score_batch``: mask, reconstruct, and score a batch with any reconstructor module."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from . import ops

#: Ranking presets (``top_weights``, ``rest_weight``) for eq. 5. ``paper``: 1.1 for the most anomalous
#: patch and 1.0 for the next, as in Chen et al.; ``none``: the unranked sum (the paper's "without
#: ranking"). The package default is set by measured AUROC in the benchmarks.
RANKING_PRESETS: dict[str, tuple[tuple[float, ...], float]] = {
    "paper": ((1.1, 1.0), 0.0),
    "none": ((), 1.0),
}


@dataclass(frozen=True)
class ScoreConfig:
    """How images are masked and scored.

    Attributes:
        patch_size: P, the side of the scoring patches; H and W must be multiples of it.
        layout: ``'phases'``, ``'random'`` (K disjoint patch-aligned masks, every patch hidden in
            exactly one copy) or ``'none'`` (K = 1, plain reconstruction).
        num_copies: K.
        seed: mask seed (layout ``'random'``).
        top_weights, rest_weight: ranking weights of eq. 5 (see ``RANKING_PRESETS``).
        mean, std: per-channel normalization of the model's inputs, or None.
        fill: value of hidden pixels after normalization.
        dtype: model input dtype; None uses the dtype of the model's parameters.
        channels_last: feed the model channels_last tensors.
    """

    patch_size: int = 16
    layout: str = "phases"
    num_copies: int = 4
    seed: int = 0
    top_weights: tuple[float, ...] = RANKING_PRESETS["paper"][0]
    rest_weight: float = RANKING_PRESETS["paper"][1]
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    fill: float = 0.0
    dtype: Optional[torch.dtype] = None
    channels_last: bool = False

    def __post_init__(self):
        if self.layout not in ("none", "phases", "random"):
            raise ValueError(f"ScoreConfig.layout must be 'none', 'phases' or 'random', got {self.layout!r}")
        if self.layout == "none" and self.num_copies != 1:
            raise ValueError(f"ScoreConfig: layout 'none' needs num_copies=1, got {self.num_copies}")
        object.__setattr__(self, "top_weights", tuple(float(v) for v in self.top_weights))

    def with_ranking(self, preset: str) -> "ScoreConfig":
        """A copy using a named ranking preset from ``RANKING_PRESETS``."""
        if preset not in RANKING_PRESETS:
            raise ValueError(f"unknown ranking preset {preset!r}; expected one of {', '.join(RANKING_PRESETS)}")
        top, rest = RANKING_PRESETS[preset]
        return dataclasses.replace(self, top_weights=top, rest_weight=rest)


@dataclass
class ScoreResult:
    """Output of :func:`score_batch`.

    Attributes:
        scores (Tensor[B] float32): image anomaly scores (eq. 5), higher = more abnormal.
        patch_errors (Tensor[B, Gh, Gw] float32): per-patch errors (eq. 2), for localization.
        assignment (Tensor[B, Gh, Gw] uint8 or None): the copy that hid each patch (None for K = 1).
        masked (Tensor[K, B, C, H, W]): the masked, normalized copies fed to the model.
        reconstructions (Tensor[K, B, C, H, W]): the model's outputs.
    """

    scores: Tensor
    patch_errors: Tensor
    assignment: Optional[Tensor]
    masked: Tensor
    reconstructions: Tensor


def _model_dtype_device(model: nn.Module) -> tuple[Optional[torch.dtype], Optional[torch.device]]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return None, None


def score_batch(
    model: nn.Module, images: Tensor, config: Optional[ScoreConfig] = None, *, keys: Optional[Tensor] = None
) -> ScoreResult:
    """Scores a batch: K masked copies -> reconstructor -> fused patch errors and ranked scores.

    Runs the model as it is and returns every intermediate (masked copies, reconstructions); for
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
    masked = ops.mask_images(  # checks images and keys
        images, keys, layout=config.layout, patch_size=config.patch_size, num_copies=config.num_copies,
        seed=config.seed, mean=config.mean, std=config.std, fill=config.fill,
        dtype=config.dtype or param_dtype or torch.float32,
        memory_format=torch.channels_last if config.channels_last else torch.contiguous_format,
    )
    k, b, c, h, w = masked.shape
    ops._check_patch_grid((h, w), config.patch_size)
    patches = (h // config.patch_size) * (w // config.patch_size)
    if len(config.top_weights) > patches:
        raise ValueError(
            f"{len(config.top_weights)} top weights given but {h}x{w} images have only {patches} patches "
            f"of {config.patch_size}x{config.patch_size}"
        )
    if keys is None:
        keys = torch.zeros(b, dtype=torch.int64, device=images.device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(masked.flatten(0, 1))
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (k * b, c, h, w):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the model must map [N, C, H, W] -> [N, C, H, W]; given {(k * b, c, h, w)} (K={k} copies of {b} images) "
            f"it returned {got}"
        )
    recon = out.unflatten(0, (k, b))
    assignment = None
    if k > 1:
        assignment = ops.patch_assignment(
            keys, (h // config.patch_size, w // config.patch_size), layout=config.layout, num_copies=k, seed=config.seed
        )
    scores, errors = ops.patch_scores_unchecked(
        images, recon, assignment, patch_size=config.patch_size, top_weights=config.top_weights,
        rest_weight=config.rest_weight, mean=config.mean, std=config.std,
    )
    ops._raise_if_not_finite(scores)
    return ScoreResult(scores=scores, patch_errors=errors, assignment=assignment, masked=masked, reconstructions=recon)
