"""The fast ops: masks (C++/CUDA) and ranked patch scores (Triton), each with a pure-PyTorch reference.

Three names per op (the house rule): ``<op>_reference`` in :mod:`.reference` (also the fallback), the
fast implementation (``patchgan_fast._C``, ``patchgan_fast.kernels``), and the public ``<op>`` here,
which checks its arguments (:mod:`.checks`: ``ValueError``/``TypeError`` naming what it received and
what it expected) and lets :mod:`._backend` decide which implementation runs. Callers that score many
chunks with one setting build a :class:`Plan` once and call :func:`mask_with`, :func:`assign_with` and
:func:`scores_with`, which check nothing more.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _backend
from ._backend import info as backend_info
from .checks import (
    LAYOUTS,
    check_boxes,
    check_images,
    check_keys,
    check_layout,
    check_reconstructions,
    check_seed,
    raise_if_not_finite,
)
from .library import patch_scores_op
from .plan import Plan
from .reference import (
    build_masks_reference,
    map_scores_reference,
    mask_images_reference,
    denormalize,
    normalize_reference,
    patch_assignment_reference,
    patch_scores_reference,
    rank_patch_errors,
    to_unit,
)

__all__ = [
    "build_masks", "patch_assignment", "mask_images", "patch_scores", "LAYOUTS", "Plan", "mask_with", "assign_with",
    "scores_with", "map_scores", "map_scores_with", "check_images", "backend_info", "to_unit", "normalize",
    "denormalize", "rank_patch_errors",
]

_MAX_TRITON_PATCHES = 16384

#: uint8 -> [0, 1] -> (x - mean) / std per channel: the models' input space (the fused ops do the same in-kernel).
normalize = normalize_reference


# ----------------------------------------------------------------------------- masks


def build_masks(
    keys: Tensor,
    size: tuple[int, int],
    *,
    layout: str = "phases",
    patch_size: int = 16,
    num_copies: int = 4,
    seed: int = 0,
    box_count: tuple[int, int] = (1, 4),
    box_size: tuple[int, int] = (8, 32),
) -> Tensor:
    """Builds K masks per image from a counter-based hash of (seed, key, index).

    Layouts:
        * ``'none'``: K = 1, nothing hidden (plain reconstruction).
        * ``'phases'``: K = s*s disjoint patch-aligned masks; patch (gy, gx) is hidden in copy
          ``(gy % s) * s + (gx % s)``.
        * ``'random'``: K disjoint patch-aligned masks from a seeded balanced assignment (a random
          permutation of the patches, patch hidden in copy ``perm(g) % K``); differs per key.
        * ``'boxes'``: training masks; copy k hides ``box_count`` random rectangles of side lengths in
          ``box_size`` (each copy independent).

    In the scoring layouts every patch is hidden in exactly one copy. The result depends on an
    image's key, never on its position in the batch, and is bit-identical on every backend.

    Args:
        keys (Tensor[B] int64): one key per image (e.g. a dataset index or a hash of its path).
        size: (H, W) of the images.

    Returns:
        Tensor[K, B, H, W] bool, True where a pixel is hidden.
    """
    check_keys(keys)
    size = (int(size[0]), int(size[1]))
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"expected a positive image size (H, W), got {size}")
    check_seed(seed)
    check_layout(layout, num_copies, patch_size, size)
    if layout == "boxes":
        check_boxes(box_count, box_size, size)
    if _backend.use_native_masks(keys.device):
        return torch.ops.patchgan_fast.build_masks(
            keys, size[0], size[1], LAYOUTS[layout], patch_size, num_copies, seed, box_count[0], box_count[1],
            box_size[0], box_size[1],
        )
    return build_masks_reference(
        keys, size, layout=layout, patch_size=patch_size, num_copies=num_copies, seed=seed, box_count=tuple(box_count),
        box_size=tuple(box_size),
    )


def patch_assignment(
    keys: Tensor, grid: tuple[int, int], *, layout: str = "phases", num_copies: int = 4, seed: int = 0
) -> Tensor:
    """The copy that hides each patch in a scoring layout (``'phases'`` or ``'random'``).

    Args:
        keys (Tensor[B] int64): one key per image.
        grid: (Gh, Gw), patches per column and per row.

    Returns:
        Tensor[B, Gh, Gw] uint8 with values in [0, K).
    """
    check_keys(keys)
    check_seed(seed)
    if layout not in ("phases", "random"):
        raise ValueError(f"patch_assignment needs layout 'phases' or 'random', got {layout!r}")
    gh, gw = int(grid[0]), int(grid[1])
    if gh < 1 or gw < 1:
        raise ValueError(f"expected a positive patch grid (Gh, Gw), got {(gh, gw)}")
    check_layout(layout, num_copies, 1, (gh, gw))
    return _assignment(keys, (gh, gw), layout, num_copies, seed)


def _assignment(keys: Tensor, grid: tuple[int, int], layout: str, num_copies: int, seed: int) -> Tensor:
    if _backend.use_native_masks(keys.device):
        return torch.ops.patchgan_fast.patch_assignment(keys, grid[0], grid[1], LAYOUTS[layout], num_copies, seed)
    return patch_assignment_reference(keys, grid, layout, num_copies, seed)


def mask_images(
    images: Tensor,
    keys: Optional[Tensor] = None,
    *,
    layout: str = "phases",
    patch_size: int = 16,
    num_copies: int = 4,
    seed: int = 0,
    box_count: tuple[int, int] = (1, 4),
    box_size: tuple[int, int] = (8, 32),
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    fill: float = 0.0,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """Builds the masks and writes the K masked, normalized copies of a batch in one pass.

    Each pixel becomes ``x = v / 255`` (uint8) or ``x = v`` (float in [0, 1]), then
    ``(x - mean[c]) / std[c]`` when ``mean``/``std`` are given, computed in fp32; hidden pixels take
    ``fill``. Masks are those of :func:`build_masks` with the same arguments.

    Args:
        images (Tensor[B, C, H, W]): uint8 or float in [0, 1], any strides.
        keys (Tensor[B] int64, optional): per-image mask keys; default all zeros (every image gets
            the same masks, independent of its batch position).
        dtype: float32, bfloat16 or float16, the dtype the model consumes.
        memory_format: ``torch.contiguous_format`` or ``torch.channels_last``.

    Returns:
        Tensor[K, B, C, H, W]: a view of a ``[K*B, C, H, W]`` tensor in ``memory_format``, so
        ``out.flatten(0, 1)`` feeds the model without a copy.
    """
    check_images(images)
    if keys is None:
        keys = torch.zeros(images.shape[0], dtype=torch.int64, device=images.device)
    check_keys(keys, images.shape[0], images.device)
    plan = Plan.build(images.shape, patch_size=patch_size, layout=layout, num_copies=num_copies, seed=seed,
                      box_count=box_count, box_size=box_size, mean=mean, std=std, fill=fill, dtype=dtype,
                      memory_format=memory_format)
    return mask_with(plan, images, keys)


def mask_with(plan: Plan, images: Tensor, keys: Tensor, assignment: Optional[Tensor] = None) -> Tensor:
    """:func:`mask_images` with the settings of a checked ``plan``, for a batch and keys already checked
    against it (the scoring path calls it per chunk). ``assignment``: the chunk's patch assignment from
    :func:`assign_with`, computed once and shared with the score kernel (the compiled op reads it instead of
    hashing the keys again; the reference recomputes the same)."""
    if _backend.use_native_masks(images.device):
        return torch.ops.patchgan_fast.mask_images(
            images, keys, LAYOUTS[plan.layout], plan.patch_size, plan.num_copies, plan.seed, plan.box_count[0],
            plan.box_count[1], plan.box_size[0], plan.box_size[1], list(plan.mean or ()), list(plan.std or ()),
            plan.fill, plan.dtype, plan.memory_format == torch.channels_last, assignment,
        )
    return mask_images_reference(
        images, keys, layout=plan.layout, patch_size=plan.patch_size, num_copies=plan.num_copies, seed=plan.seed,
        box_count=plan.box_count, box_size=plan.box_size, mean=plan.mean, std=plan.std, fill=plan.fill,
        dtype=plan.dtype, memory_format=plan.memory_format,
    )


def assign_with(plan: Plan, keys: Tensor) -> Optional[Tensor]:
    """The copy that hides each patch under ``plan`` (``uint8 [B, Gh, Gw]``), or None when K = 1."""
    if plan.num_copies == 1:
        return None
    return _assignment(keys, plan.grid, plan.layout, plan.num_copies, plan.seed)


# ----------------------------------------------------------------------------- patch scores


def patch_scores(
    images: Tensor,
    reconstructions: Tensor,
    assignment: Optional[Tensor] = None,
    *,
    patch_size: int,
    top_weights: Sequence[float] = (1.1, 1.0),
    rest_weight: float = 0.0,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    patch_weights: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Per-patch reconstruction errors (eq. 2) and the ranked image score (eq. 5), fused.

    The patch error is the mean of ``(x - x_hat)**2`` over the channels and the P x P pixels of the
    patch, accumulated in fp32, where ``x`` is the image normalized as in :func:`mask_images` and
    ``x_hat`` is read from the copy ``assignment[b, gy, gx]`` in which that patch was hidden. With the
    errors sorted in descending order, ``score = sum_{i<T} top_weights[i] * e_(i) + rest_weight *
    sum_{i>=T} e_(i)``; equal errors are interchangeable, so ties cannot change a score.

    Args:
        images (Tensor[B, C, H, W]): uint8, or float in [0, 1].
        reconstructions (Tensor[K, B, C, H, W] or Tensor[B, C, H, W]): fp32/bf16/fp16, any strides
            (contiguous or channels_last).
        assignment (Tensor[B, Gh, Gw] uint8, optional): from :func:`patch_assignment`; required when
            K > 1.
        patch_size: P; H and W must be multiples of it.
        top_weights: weights of the T largest patch errors (T = len, 0 to Gh*Gw). Default: the
            paper's (1.1, 1.0).
        rest_weight: weight of every other patch error (0 in the paper preset; 1 with no top weights
            is the unranked sum).
        mean, std: per-channel normalization the model was trained with (as in :func:`mask_images`).
        patch_weights (Tensor[Gh, Gw] float32, optional): per-position weights that multiply the patch
            errors before they are ranked (:attr:`PatchGAN.patch_weights`: normal errors made
            comparable across positions). The returned patch errors stay unweighted.

    Returns:
        (scores Tensor[B] float32, patch_errors Tensor[B, Gh, Gw] float32)

    Raises:
        ValueError: on inconsistent shapes, devices or K, T larger than the patch count, or when
            the reconstructions hold NaN/inf (the offending batch positions are named).
    """
    check_images(images)
    plan = Plan.build(images.shape, patch_size=patch_size, layout="none", num_copies=1, mean=mean, std=std,
                      top_weights=top_weights, rest_weight=rest_weight, patch_weights=patch_weights,
                      device=images.device)
    check_reconstructions(reconstructions, images, assignment, plan.grid, patch_size)
    scores, errors = scores_with(plan, images, reconstructions, assignment)
    raise_if_not_finite(scores)
    return scores, errors


def scores_with(plan: Plan, images: Tensor, reconstructions: Tensor, assignment: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """:func:`patch_scores` with the normalization, ranking and patch weights of a checked ``plan``, for
    arguments already checked against it."""
    kwargs = dict(patch_size=plan.patch_size, top_weights=plan.top_weights, rest_weight=plan.rest_weight,
                  mean=plan.mean, std=plan.std, patch_weights=plan.patch_weights)
    if plan.grid[0] * plan.grid[1] <= _MAX_TRITON_PATCHES and _backend.use_triton_scores(images.device):
        kernels = _backend.triton_kernels()
        if images.device.type == "cuda":  # the torch.library op: traceable by torch.compile, checked by opcheck
            constants = kernels.device_constants(plan.top_weights, plan.mean, plan.std, images.device)
            return patch_scores_op(images, reconstructions, assignment, constants, plan.patch_weights, plan.patch_size,
                                   len(plan.top_weights), plan.rest_weight)
        return kernels.patch_scores_triton(images, reconstructions, assignment, **kwargs)  # the interpreter
    return patch_scores_reference(images, reconstructions, assignment, **kwargs)


def map_scores(
    maps: Tensor,
    *,
    patch_size: int,
    top_weights: Sequence[float] = (1.1, 1.0),
    rest_weight: float = 0.0,
    patch_weights: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Per-patch means of per-pixel error maps and their ranked image score (eq. 5): the reduction and
    ranking of :func:`patch_scores` for an error measure computed elsewhere (the structural error).

    Args:
        maps (Tensor[B, H, W]): floating, any strides; H and W multiples of ``patch_size``.
        top_weights, rest_weight, patch_weights: as in :func:`patch_scores`.

    Returns:
        (scores Tensor[B] float32, patch_errors Tensor[B, Gh, Gw] float32)
    """
    if not isinstance(maps, Tensor) or maps.dim() != 3 or not maps.is_floating_point():
        got = f"{maps.dtype} tensor of shape {tuple(maps.shape)}" if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"expected error maps as a floating tensor [B, H, W], got {got}")
    if maps.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of error maps, got shape {tuple(maps.shape)}")
    plan = Plan.build((1, *maps.shape[1:]), patch_size=patch_size, layout="none", num_copies=1,
                      top_weights=top_weights, rest_weight=rest_weight, patch_weights=patch_weights, device=maps.device)
    scores, errors = map_scores_with(plan, maps)
    raise_if_not_finite(scores)
    return scores, errors


def map_scores_with(plan: Plan, maps: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`map_scores` with the ranking and patch weights of a checked ``plan``."""
    kwargs = dict(patch_size=plan.patch_size, top_weights=plan.top_weights, rest_weight=plan.rest_weight,
                  patch_weights=plan.patch_weights)
    if plan.grid[0] * plan.grid[1] <= _MAX_TRITON_PATCHES and _backend.use_triton_scores(maps.device):
        return _backend.triton_kernels().map_scores_triton(maps, **kwargs)
    return map_scores_reference(maps, **kwargs)


# ----------------------------------------------------------------------------- torch.compile support


def _register_fakes() -> None:
    if _backend.extension() is None:
        return

    @torch.library.register_fake("patchgan_fast::build_masks")
    def _(keys, height, width, layout, patch_size, num_copies, seed, min_boxes, max_boxes, min_size, max_size):
        return keys.new_empty((num_copies, keys.shape[0], height, width), dtype=torch.bool)

    @torch.library.register_fake("patchgan_fast::patch_assignment")
    def _(keys, grid_h, grid_w, layout, num_copies, seed):
        return keys.new_empty((keys.shape[0], grid_h, grid_w), dtype=torch.uint8)

    @torch.library.register_fake("patchgan_fast::mask_images")
    def _(images, keys, layout, patch_size, num_copies, seed, min_boxes, max_boxes, min_size, max_size, mean, std,
          fill, dtype, channels_last, assignment=None):
        b, c, h, w = images.shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty((num_copies * b, c, h, w), dtype=dtype, device=images.device, memory_format=fmt)
        return out.view(num_copies, b, c, h, w)


_register_fakes()
