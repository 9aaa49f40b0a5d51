"""What a score is made of: :class:`ScoreConfig` (masks, error measure, ranking, normalization), its
validated :class:`~patchgan_fast.ops.Plan` for one image shape, and :class:`ScoreResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..ops import Plan
from ..ops.checks import check_patch_grid

#: Ranking presets (``top_weights``, ``rest_weight``) for eq. 5. ``paper``: 1.1 for the most anomalous
#: patch and 1.0 for the next, as in Chen et al.; ``none``: the unranked sum (the paper's "without
#: ranking"). The package default is set by measured AUROC in the benchmarks.
RANKING_PRESETS: dict[str, tuple[tuple[float, ...], float]] = {
    "paper": ((1.1, 1.0), 0.0),
    "none": ((), 1.0),
}

#: Patch error measures: ``mse``, the paper's eq. 2 (fused with the ranking in the Triton kernel);
#: ``msgms``, RIAD's multi-scale gradient-magnitude similarity (:mod:`patchgan_fast.scoring.gms`), a map
#: computed with PyTorch convolutions, then reduced per patch and ranked by the map kernel
#: (:func:`patchgan_fast.ops.map_scores`); ``mse+msgms``, their sum, each divided by
#: its scale in ``ScoreConfig.error_scales`` (a trained model's: the spread of its normal validation
#: scores under each measure, so both count about equally).
ERRORS = ("mse", "msgms", "mse+msgms")


def default_forward_batch(device: torch.device, num_copies: int = 1) -> int:
    """Images per reconstructor call when scoring. On a GPU, the copies of two images per SM, at least 256:
    then a chunk holds enough images for the patch-score kernel to rank each one in its own program, in one
    launch per chunk (fewer images split their patch rows over programs and need a second, ranking kernel).
    On a CPU 64, where a whole batch in one call runs 1.4-2.6x slower (the fashion-mnist and brain-mri
    models, 1,024 copies, 2 cores)."""
    if device.type == "cuda":
        return max(256, 2 * torch.cuda.get_device_properties(device).multi_processor_count * num_copies)
    return 64


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
            (``model.neighbour_distances``), each in these units, summed (:mod:`patchgan_fast.scoring.neighbours`).
            A :class:`~patchgan_fast.PatchGAN` with a feature bank sets them; None: eq. 5 alone.
        neighbour_weights: what eq. 5 and the distance, each in those units, are multiplied by before they are
            summed; a :class:`~patchgan_fast.PatchGAN` with a feature bank chooses them on its normal validation
            images (:func:`~patchgan_fast.scoring.neighbours.choose_weights`).
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
    neighbour_weights: tuple[float, float] = (1.0, 1.0)

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
        try:
            weights = tuple(float(v) for v in self.neighbour_weights)
        except (TypeError, ValueError):
            weights = ()
        if len(weights) != 2 or not all(0 <= v < float("inf") for v in weights) or not any(weights):
            raise ValueError(f"ScoreConfig.neighbour_weights must be two finite floats >= 0, not both 0 (eq. 5, "
                             f"distance), got {self.neighbour_weights!r}")
        object.__setattr__(self, "neighbour_weights", weights)
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

    def plan(self, shape: Sequence[int], device, dtype: torch.dtype = torch.float32) -> Plan:
        """The checked :class:`~patchgan_fast.ops.Plan` of this config for images of ``shape`` ([B, C, H, W] or
        [C, H, W]) on ``device``, the model consuming ``dtype`` (``self.dtype`` wins when set)."""
        c, h, w = (int(v) for v in tuple(shape)[-3:])
        if self.mean is not None and len(self.mean) != c:
            raise ValueError(f"images have {c} channel(s) but this config (a model's) is for {len(self.mean)}-channel "
                             f"images (its mean and std have {len(self.mean)} values); convert the images "
                             f"(patchgan_fast.data.fit_to_size does RGB <-> gray)")
        grid = check_patch_grid((h, w), self.patch_size)
        return Plan.build(
            (c, h, w), patch_size=self.patch_size, layout=self.layout, num_copies=self.num_copies, seed=self.seed,
            mean=self.mean, std=self.std, fill=self.fill, dtype=self.dtype or dtype,
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format,
            top_weights=self.top_weights, rest_weight=self.rest_weight,
            patch_weights=self.patch_weights_tensor(grid, device), device=device,
        )

    def patch_weights_tensor(self, grid: tuple[int, int], device) -> Optional[Tensor]:
        """``patch_weights`` as a float32 [Gh, Gw] tensor on ``device`` (None when unset).

        Raises:
            ValueError: the weights were made for another patch grid.
        """
        if self.patch_weights is None:
            return None
        shape = (len(self.patch_weights), len(self.patch_weights[0]))
        if shape != tuple(grid):
            p = self.patch_size
            raise ValueError(f"patch_weights are for a {shape[0]}x{shape[1]} patch grid but the images have "
                             f"{grid[0]}x{grid[1]} patches of {p}x{p}: expected images of {shape[0] * p}x{shape[1] * p} "
                             f"(the size the model was trained at), got {grid[0] * p}x{grid[1] * p}; resize them")
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
        patch_errors (Tensor[B, Gh, Gw] float32): per-patch errors (eq. 2, or ``config.error``), for localization;
            with a ``patches`` nearest-neighbour term in the score, each patch's part of the score instead (eq. 5's
            patch errors times their position weights and the distance map's largest window mean in the patch, in
            the score's units and weights: :func:`~patchgan_fast.scoring.neighbours.combine_patches`).
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


def score_statistics(scores: Tensor) -> dict[str, float]:
    """Statistics of normal validation scores (``PatchGAN.score_stats``): mean, std, p50, p95, p99, count."""
    q = torch.quantile(scores.double(), torch.tensor([0.5, 0.95, 0.99], dtype=torch.float64))
    return {"mean": float(scores.mean()), "std": float(scores.std()) if len(scores) > 1 else 0.0,
            "p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2]), "count": len(scores)}
