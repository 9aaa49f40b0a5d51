"""Public fast ops: masks (C++/CUDA) and ranked patch scores (Triton), each with a reference fallback.

Every function checks its arguments and raises ``ValueError``/``TypeError`` naming what it received
and what it expected; ``patchgan_fast._backend`` decides which implementation runs.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _backend
from ._reference import (
    LAYOUTS,
    build_masks_reference,
    mask_images_reference,
    patch_assignment_reference,
    patch_scores_reference,
)

__all__ = ["build_masks", "patch_assignment", "mask_images", "patch_scores", "LAYOUTS"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_MODEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_TRITON_PATCHES = 16384


# ----------------------------------------------------------------------------- argument checks


def _check_layout(layout: str, num_copies: int, patch_size: int, size: tuple[int, int]) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown mask layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not isinstance(num_copies, int) or not 1 <= num_copies <= 255:
        raise ValueError(f"expected num_copies an int in [1, 255], got {num_copies!r}")
    h, w = size
    if layout == "none" and num_copies != 1:
        raise ValueError(f"layout 'none' hides nothing and needs num_copies=1, got {num_copies}")
    if layout in ("phases", "random"):
        _check_patch_grid(size, patch_size)
        patches = (h // patch_size) * (w // patch_size)
        if not 2 <= num_copies <= patches:
            raise ValueError(
                f"layout {layout!r} needs 2 <= num_copies <= patches per image ({patches}), got {num_copies}; "
                "use layout='none' with num_copies=1 for plain reconstruction"
            )
        if layout == "phases" and round(num_copies**0.5) ** 2 != num_copies:
            raise ValueError(f"layout 'phases' needs a square num_copies (4, 9, 16, ...), got {num_copies}")


def _check_patch_grid(size: tuple[int, int], patch_size: int) -> None:
    h, w = size
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"expected a positive int patch_size, got {patch_size!r}")
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"image size {h}x{w} is not divisible by patch_size {patch_size}; resize or crop to a multiple of it"
        )


def _check_boxes(box_count: Sequence[int], box_size: Sequence[int], size: tuple[int, int]) -> None:
    (nmin, nmax), (smin, smax) = box_count, box_size
    if not 0 <= nmin <= nmax <= 64:
        raise ValueError(f"expected box_count (min, max) with 0 <= min <= max <= 64, got {tuple(box_count)}")
    if not 1 <= smin <= smax <= min(size):
        raise ValueError(
            f"expected box_size (min, max) with 1 <= min <= max <= min(H, W) = {min(size)}, got {tuple(box_size)}"
        )


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"expected seed an int in [0, 2**32), got {seed!r}")


def _check_keys(keys: Tensor, batch: Optional[int] = None) -> None:
    if not isinstance(keys, Tensor) or keys.dim() != 1 or keys.dtype != torch.int64:
        got = f"{keys.dtype} tensor of shape {tuple(keys.shape)}" if isinstance(keys, Tensor) else type(keys).__name__
        raise TypeError(f"expected keys as an int64 tensor of shape [B], got {got}")
    if keys.numel() == 0:
        raise ValueError("expected a non-empty batch, got 0 keys")
    if batch is not None and keys.numel() != batch:
        raise ValueError(f"expected one key per image: {batch} images, {keys.numel()} keys")


def _check_normalization(mean, std, channels: int) -> None:
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither")
    if mean is None:
        return
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"expected mean and std with one value per channel ({channels}), got {len(mean)} and {len(std)}")
    if any(not s > 0 for s in std):
        raise ValueError(f"expected positive std values, got {tuple(std)}")


def check_images(images: Tensor, name: str = "images") -> None:
    """Checks a batch ``[B, C, H, W]`` of uint8, or of floats in [0, 1]; float values are scanned once."""
    if not isinstance(images, Tensor):
        raise TypeError(f"expected {name} as a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        hint = "; for a single image use images[None]" if images.dim() == 3 else ""
        raise ValueError(f"expected {name} of shape [B, C, H, W], got {images.dim()}-D {tuple(images.shape)}{hint}")
    if images.dtype != torch.uint8 and images.dtype not in _FLOATS:
        raise TypeError(f"expected {name} of dtype uint8 or floating, got {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of {name}, got shape {tuple(images.shape)}")
    if images.shape[1] < 1 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"expected {name} with positive C, H, W, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        lo, hi = torch.aminmax(images)
        lo, hi = float(lo), float(hi)
        if not (torch.isfinite(torch.tensor([lo, hi])).all()):
            raise ValueError(f"{name} contain NaN or inf (min {lo}, max {hi}); clean or drop those images")
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"expected float {name} in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; pass uint8 or rescale to [0, 1]"
            )


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
    _check_keys(keys)
    size = (int(size[0]), int(size[1]))
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"expected a positive image size (H, W), got {size}")
    _check_seed(seed)
    _check_layout(layout, num_copies, patch_size, size)
    if layout == "boxes":
        _check_boxes(box_count, box_size, size)
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
    _check_keys(keys)
    _check_seed(seed)
    if layout not in ("phases", "random"):
        raise ValueError(f"patch_assignment needs layout 'phases' or 'random', got {layout!r}")
    gh, gw = int(grid[0]), int(grid[1])
    if gh < 1 or gw < 1:
        raise ValueError(f"expected a positive patch grid (Gh, Gw), got {(gh, gw)}")
    _check_layout(layout, num_copies, 1, (gh, gw))
    if _backend.use_native_masks(keys.device):
        return torch.ops.patchgan_fast.patch_assignment(keys, gh, gw, LAYOUTS[layout], num_copies, seed)
    return patch_assignment_reference(keys, (gh, gw), layout, num_copies, seed)


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
    b, c, h, w = images.shape
    if keys is None:
        keys = torch.zeros(b, dtype=torch.int64, device=images.device)
    _check_keys(keys, b)
    if keys.device != images.device:
        raise ValueError(f"images are on {images.device} but keys on {keys.device}; put both on one device")
    _check_seed(seed)
    _check_layout(layout, num_copies, patch_size, (h, w))
    if layout == "boxes":
        _check_boxes(box_count, box_size, (h, w))
    _check_normalization(mean, std, c)
    if dtype not in _MODEL_DTYPES:
        raise TypeError(f"expected dtype float32, bfloat16 or float16, got {dtype}")
    if memory_format not in (torch.contiguous_format, torch.channels_last):
        raise ValueError(f"expected memory_format contiguous_format or channels_last, got {memory_format}")
    return mask_images_unchecked(
        images, keys, layout=layout, patch_size=patch_size, num_copies=num_copies, seed=seed, box_count=box_count,
        box_size=box_size, mean=mean, std=std, fill=fill, dtype=dtype, memory_format=memory_format,
    )


def mask_images_unchecked(
    images: Tensor,
    keys: Tensor,
    *,
    layout: str,
    patch_size: int,
    num_copies: int,
    seed: int,
    box_count: tuple[int, int] = (1, 4),
    box_size: tuple[int, int] = (8, 32),
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    fill: float = 0.0,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """:func:`mask_images` without the checks, for callers that checked the batch and the settings once
    (the scoring pipeline calls it per chunk)."""
    if _backend.use_native_masks(images.device):
        return torch.ops.patchgan_fast.mask_images(
            images, keys, LAYOUTS[layout], patch_size, num_copies, seed, box_count[0], box_count[1], box_size[0],
            box_size[1], list(mean or ()), list(std or ()), float(fill), dtype, memory_format == torch.channels_last,
        )
    return mask_images_reference(
        images, keys, layout=layout, patch_size=patch_size, num_copies=num_copies, seed=seed,
        box_count=tuple(box_count), box_size=tuple(box_size), mean=mean, std=std, fill=float(fill), dtype=dtype,
        memory_format=memory_format,
    )


# ----------------------------------------------------------------------------- patch scores


def _check_scores_args(images, reconstructions, assignment, patch_size, top_weights, rest_weight, mean, std,
                       patch_weights=None) -> None:
    if not isinstance(reconstructions, Tensor):
        raise TypeError(f"expected reconstructions as a torch.Tensor, got {type(reconstructions).__name__}")
    if reconstructions.dim() not in (4, 5):
        raise ValueError(
            "expected reconstructions of shape [K, B, C, H, W] or [B, C, H, W], "
            f"got {reconstructions.dim()}-D {tuple(reconstructions.shape)}"
        )
    if reconstructions.dtype not in _FLOATS:
        raise TypeError(f"expected floating reconstructions (fp32/bf16/fp16), got {reconstructions.dtype}")
    if tuple(reconstructions.shape[-4:]) != tuple(images.shape):
        raise ValueError(
            f"reconstructions {tuple(reconstructions.shape)} do not match images {tuple(images.shape)}: expected "
            f"[K, {', '.join(map(str, images.shape))}] or {list(images.shape)}; check the channel count of the model"
        )
    if reconstructions.device != images.device:
        raise ValueError(f"images are on {images.device} but reconstructions on {reconstructions.device}")
    b, c, h, w = images.shape
    _check_patch_grid((h, w), patch_size)
    gh, gw = h // patch_size, w // patch_size
    k = reconstructions.shape[0] if reconstructions.dim() == 5 else 1
    if k == 0:
        raise ValueError("expected at least one reconstruction per image, got K = 0")
    if k > 1 or assignment is not None:
        if assignment is None:
            raise ValueError(f"{k} reconstructions per image need the patch assignment [B, Gh, Gw] that says which to read")
        if not isinstance(assignment, Tensor) or assignment.dtype != torch.uint8:
            got = assignment.dtype if isinstance(assignment, Tensor) else type(assignment).__name__
            raise TypeError(f"expected assignment as a uint8 tensor (from ops.patch_assignment), got {got}")
        if tuple(assignment.shape) != (b, gh, gw):
            raise ValueError(f"expected assignment of shape {(b, gh, gw)} for patch_size {patch_size}, got {tuple(assignment.shape)}")
        if assignment.device != images.device:
            raise ValueError(f"images are on {images.device} but assignment on {assignment.device}")
        top = int(assignment.max())
        if top >= k:
            raise ValueError(
                f"assignment refers to copy {top} but there are only K = {k} reconstructions; "
                "the model output and the masks disagree on num_copies"
            )
    t = len(top_weights)
    if t > gh * gw:
        raise ValueError(f"{t} top weights given but images have only {gh * gw} patches of {patch_size}x{patch_size}")
    weights = [*top_weights, rest_weight]
    if not all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for v in weights):
        raise ValueError(f"expected finite ranking weights, got top_weights={tuple(top_weights)}, rest_weight={rest_weight}")
    _check_normalization(mean, std, c)
    if patch_weights is not None:
        if not isinstance(patch_weights, Tensor) or patch_weights.dtype != torch.float32:
            got = patch_weights.dtype if isinstance(patch_weights, Tensor) else type(patch_weights).__name__
            raise TypeError(f"expected patch_weights as a float32 tensor [Gh, Gw], got {got}")
        if tuple(patch_weights.shape) != (gh, gw):
            raise ValueError(f"expected patch_weights of shape {(gh, gw)} for patch_size {patch_size}, "
                             f"got {tuple(patch_weights.shape)}")
        if patch_weights.device != images.device:
            raise ValueError(f"images are on {images.device} but patch_weights on {patch_weights.device}")
        if not bool(torch.isfinite(patch_weights).all()) or bool((patch_weights < 0).any()):
            raise ValueError("expected finite, non-negative patch_weights")


def _raise_if_not_finite(scores: Tensor) -> None:
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"non-finite scores for images at batch positions {idx[:10]}{' ...' if len(idx) > 10 else ''}: "
            "the reconstructions contain NaN or inf (a diverged model, or fp16 overflow)"
        )


def patch_scores_unchecked(
    images: Tensor,
    reconstructions: Tensor,
    assignment: Optional[Tensor],
    *,
    patch_size: int,
    top_weights: Sequence[float],
    rest_weight: float,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    patch_weights: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """:func:`patch_scores` without the checks, for callers that built the arguments themselves."""
    h, w = images.shape[-2:]
    patches = (h // patch_size) * (w // patch_size)
    kwargs = dict(patch_size=patch_size, top_weights=tuple(top_weights), rest_weight=float(rest_weight), mean=mean, std=std,
                  patch_weights=None if patch_weights is None else patch_weights.contiguous())
    if patches <= _MAX_TRITON_PATCHES and _backend.use_triton_scores(images.device):
        return _backend.triton_kernels().patch_scores_triton(images, reconstructions, assignment, **kwargs)
    return patch_scores_reference(images, reconstructions, assignment, **kwargs)


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
    _check_scores_args(images, reconstructions, assignment, patch_size, top_weights, rest_weight, mean, std, patch_weights)
    scores, errors = patch_scores_unchecked(
        images, reconstructions, assignment, patch_size=patch_size, top_weights=top_weights,
        rest_weight=rest_weight, mean=mean, std=std, patch_weights=patch_weights,
    )
    _raise_if_not_finite(scores)
    return scores, errors


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
          fill, dtype, channels_last):
        b, c, h, w = images.shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty((num_copies * b, c, h, w), dtype=dtype, device=images.device, memory_format=fmt)
        return out.view(num_copies, b, c, h, w)


_register_fakes()
