"""``score_batch``: mask, reconstruct, and score a batch with any reconstructor module."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from . import ops
from ._reference import infilled_reference, normalize_reference, rank_patch_errors
from .gms import gms_errors
from .neighbours import check_bank, combine

#: Ranking presets (``top_weights``, ``rest_weight``) for eq. 5. ``paper``: 1.1 for the most anomalous
#: patch and 1.0 for the next, as in Chen et al.; ``none``: the unranked sum (the paper's "without
#: ranking"). The package default is set by measured AUROC in the benchmarks.
RANKING_PRESETS: dict[str, tuple[tuple[float, ...], float]] = {
    "paper": ((1.1, 1.0), 0.0),
    "none": ((), 1.0),
}

#: Patch error measures: ``mse``, the paper's eq. 2 (fused with the ranking in the Triton kernel);
#: ``msgms``, RIAD's multi-scale gradient-magnitude similarity (:mod:`patchgan_fast.gms`), computed
#: with PyTorch convolutions and ranked with ``torch.sort``; ``mse+msgms``, their sum, each divided by
#: its scale in ``ScoreConfig.error_scales`` (a trained model's: the spread of its normal validation
#: scores under each measure, so both count about equally).
ERRORS = ("mse", "msgms", "mse+msgms")


def default_forward_batch(device: torch.device) -> int:
    """Images per reconstructor call when scoring: 256 on a GPU; 64 on a CPU, where a whole batch in
    one call runs 1.4-2.6x slower (the fashion-mnist and brain-mri models, 1,024 copies, 2 cores)."""
    return 256 if device.type == "cuda" else 64


@dataclass(frozen=True)
class ScoreConfig:
    """How images are masked and scored.

    Attributes:
        patch_size: P, the side of the scoring patches; H and W must be multiples of it.
        error: the per-pixel error averaged over each patch, one of ``ERRORS``.
        error_scales: for ``error='mse+msgms'``, the divisors (mse, msgms) of the two measures before
            they are summed; None: 1 each. A trained :class:`~patchgan_fast.PatchGAN` sets them to
            the standard deviations of its normal validation images' scores under each measure.
        layout: ``'phases'``, ``'random'`` (K disjoint patch-aligned masks, every patch hidden in
            exactly one copy) or ``'none'`` (K = 1, plain reconstruction).
        num_copies: K.
        seed: mask seed (layout ``'random'``).
        top_weights, rest_weight: ranking weights of eq. 5 (see ``RANKING_PRESETS``).
        patch_weights: per-position weights (Gh rows of Gw floats) that multiply the patch errors
            before ranking, or None; a trained :class:`~patchgan_fast.PatchGAN` sets them from its
            normal validation images (``TrainConfig.position_weights``).
        mean, std: per-channel normalization of the model's inputs, or None.
        fill: value of hidden pixels after normalization.
        dtype: model input dtype; None uses the dtype of the model's parameters.
        channels_last: feed the model channels_last tensors.
        neighbour_scales: (mean, std) of normal images' eq. 5 scores, then of their nearest-neighbour
            distances; when set, the image score is eq. 5 plus the model's nearest-neighbour distance
            (``model.neighbour_distances``), each in these units, summed (:mod:`patchgan_fast.neighbours`).
            A :class:`~patchgan_fast.PatchGAN` with a feature bank sets them; None: eq. 5 alone.
    """

    patch_size: int = 16
    error: str = "mse"
    error_scales: Optional[tuple[float, float]] = None
    layout: str = "phases"
    num_copies: int = 4
    seed: int = 0
    top_weights: tuple[float, ...] = RANKING_PRESETS["paper"][0]
    rest_weight: float = RANKING_PRESETS["paper"][1]
    patch_weights: Optional[tuple[tuple[float, ...], ...]] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    fill: float = 0.0
    dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    neighbour_scales: Optional[tuple[float, float, float, float]] = None

    def __post_init__(self):
        if self.error not in ERRORS:
            raise ValueError(f"ScoreConfig.error must be one of {', '.join(ERRORS)}, got {self.error!r}")
        if self.error_scales is not None:
            scales = tuple(float(v) for v in self.error_scales)
            if len(scales) != 2 or not all(0 < v < float("inf") for v in scales):
                raise ValueError(f"ScoreConfig.error_scales must be two positive finite floats (mse, msgms), "
                                 f"got {self.error_scales!r}")
            object.__setattr__(self, "error_scales", scales)
        if self.neighbour_scales is not None:
            scales = tuple(float(v) for v in self.neighbour_scales)
            if len(scales) != 4 or not all(abs(v) < float("inf") for v in scales) or scales[1] <= 0 or scales[3] <= 0:
                raise ValueError(f"ScoreConfig.neighbour_scales must be four finite floats (score mean, score std > 0, "
                                 f"distance mean, distance std > 0), got {self.neighbour_scales!r}")
            object.__setattr__(self, "neighbour_scales", scales)
        if self.layout not in ("none", "phases", "random"):
            raise ValueError(f"ScoreConfig.layout must be 'none', 'phases' or 'random', got {self.layout!r}")
        if self.layout == "none" and self.num_copies != 1:
            raise ValueError(f"ScoreConfig: layout 'none' needs num_copies=1, got {self.num_copies}")
        object.__setattr__(self, "top_weights", tuple(float(v) for v in self.top_weights))
        if self.patch_weights is not None:
            rows = tuple(tuple(float(v) for v in row) for row in self.patch_weights)
            if not rows or len({len(r) for r in rows}) != 1 or not rows[0]:
                raise ValueError("ScoreConfig.patch_weights must be Gh rows of Gw floats (a non-empty rectangle)")
            if not all(0 <= v < float("inf") for r in rows for v in r):
                raise ValueError("ScoreConfig.patch_weights must be finite and non-negative")
            object.__setattr__(self, "patch_weights", rows)

    def patch_weights_tensor(self, grid: tuple[int, int], device) -> Optional[Tensor]:
        """``patch_weights`` as a float32 [Gh, Gw] tensor on ``device`` (None when unset).

        Raises:
            ValueError: the weights were made for another patch grid.
        """
        if self.patch_weights is None:
            return None
        shape = (len(self.patch_weights), len(self.patch_weights[0]))
        if shape != tuple(grid):
            raise ValueError(f"patch_weights are for a {shape[0]}x{shape[1]} patch grid but the images have "
                             f"{grid[0]}x{grid[1]} patches of {self.patch_size}x{self.patch_size}")
        return torch.tensor(self.patch_weights, dtype=torch.float32, device=device)

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
        scores (Tensor[B] float32): image anomaly scores (eq. 5; with ``config.neighbour_scales``, eq. 5
            plus the nearest-neighbour distance, each in units of normal images'), higher = more abnormal.
        patch_errors (Tensor[B, Gh, Gw] float32): per-patch errors (eq. 2, or ``config.error``), for localization.
        assignment (Tensor[B, Gh, Gw] uint8 or None): the copy that hid each patch (None for K = 1).
        masked (Tensor[K, B, C, H, W]): the masked, normalized copies fed to the model.
        reconstructions (Tensor[K, B, C, H, W]): the model's outputs.
        neighbour_distances (Tensor[B] float32 or None): the nearest-neighbour distances added to the
            scores (with ``config.neighbour_scales``).
    """

    scores: Tensor
    patch_errors: Tensor
    assignment: Optional[Tensor]
    masked: Tensor
    reconstructions: Tensor
    neighbour_distances: Optional[Tensor] = None


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
            outs = [model(c) for c in masked.flatten(0, 1).split(default_forward_batch(masked.device))]
            out = torch.cat(outs) if len(outs) > 1 and all(isinstance(o, Tensor) for o in outs) else outs[0]
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
    weights = config.patch_weights_tensor((h // config.patch_size, w // config.patch_size), images.device)
    scores, errors = patch_scores(images, recon, assignment, config, weights)
    distances = None
    if config.neighbour_scales is not None:
        check_bank(model)
        distances = model.neighbour_distances(images)
        scores = combine(scores, distances, config.neighbour_scales)
    ops._raise_if_not_finite(scores)
    return ScoreResult(scores=scores, patch_errors=errors, assignment=assignment, masked=masked, reconstructions=recon,
                       neighbour_distances=distances)


def patch_scores(
    images: Tensor, reconstructions: Tensor, assignment: Optional[Tensor], config: ScoreConfig,
    patch_weights: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """(scores [B], patch errors [B, Gh, Gw]) with ``config.error``: the fused kernel for ``mse``;
    otherwise the mean of :func:`pixel_errors` over each patch, ranked (eq. 5) in PyTorch.
    Arguments as :func:`~patchgan_fast.ops.patch_scores`, unchecked."""
    if config.error == "mse":
        return ops.patch_scores_unchecked(
            images, reconstructions, assignment, patch_size=config.patch_size, top_weights=config.top_weights,
            rest_weight=config.rest_weight, mean=config.mean, std=config.std, patch_weights=patch_weights,
        )
    pixels = pixel_errors(images, reconstructions, assignment, patch_size=config.patch_size, mean=config.mean,
                          std=config.std, error=config.error, error_scales=config.error_scales)
    errors = nn.functional.avg_pool2d(pixels[:, None], config.patch_size)[:, 0]
    return rank_patch_errors(errors, top_weights=config.top_weights, rest_weight=config.rest_weight,
                             patch_weights=patch_weights), errors


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
    :func:`~patchgan_fast.gms.gms_errors` map of the image against its in-filled reconstruction;
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
    squared = (normalize_reference(images, mean, std) - infilled.float()).square().mean(1)
    if error == "mse":
        return squared
    return combine_errors(squared, gms_errors(images, infilled, mean=mean, std=std), error_scales)


def combine_errors(squared: Tensor, structural: Tensor, error_scales: Optional[tuple[float, float]]) -> Tensor:
    """``error='mse+msgms'`` from its parts (pixel maps or patch errors, any shape): each divided by its
    entry of ``error_scales`` (None: 1 each), summed."""
    scale_mse, scale_msgms = error_scales or (1.0, 1.0)
    return squared / scale_mse + structural / scale_msgms


def default_smoothing(patch_size: int) -> int:
    """The window of :func:`error_maps`: about half a patch, odd (patch 4 -> 3, 8 -> 5, 16 -> 9)."""
    return (patch_size // 2) | 1


def error_maps(
    model: nn.Module, images: Tensor, config: Optional[ScoreConfig] = None, *, keys: Optional[Tensor] = None,
    smoothing: Optional[int] = None, batch: int = 64,
) -> Tensor:
    """Localization maps: :func:`pixel_errors` averaged over a ``smoothing`` x ``smoothing`` window
    (default :func:`default_smoothing` of the patch size; 1: no smoothing). ``[B, H, W]`` float32 on
    the images' device; ``batch`` images at a time go to the model's device, so the images may stay
    in CPU memory.

    Finer than the patch-error grid: on the brain MRI benchmark these maps raised pixel AUROC from
    0.77 (patch errors, nearest-upsampled) to 0.87 (benchmarks/results/cpu-experiment-brain-levers.md).
    """
    if config is None:
        config = getattr(model, "score_config", None) or ScoreConfig()
    if isinstance(config, ScoreConfig):  # the maps need the reconstructions only
        config = dataclasses.replace(config, neighbour_scales=None)
    k = default_smoothing(config.patch_size) if smoothing is None else smoothing
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ValueError(f"expected smoothing a positive odd int, got {k!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"expected batch a positive int, got {batch!r}")
    if not isinstance(images, Tensor):
        raise TypeError(f"expected images as a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    device = _model_dtype_device(model)[1] or images.device
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device)
        part = None if keys is None else keys[i:i + batch].to(device)
        r = score_batch(model, x, config, keys=part)
        e = pixel_errors(x, r.reconstructions, r.assignment, patch_size=config.patch_size, mean=config.mean,
                         std=config.std, error=config.error, error_scales=config.error_scales)
        if k > 1:
            e = nn.functional.avg_pool2d(e[:, None], k, 1, k // 2, count_include_pad=False)[:, 0]
        out.append(e.to(images.device))
    return torch.cat(out)
