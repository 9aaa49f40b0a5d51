"""Every argument check of the ops, written once: each raises ``ValueError``/``TypeError`` naming what
it received and what it expected. The public ops, :class:`~patchgan_fast.ops.Plan` and the layers
above call these; nothing else repeats them."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

#: Mask layouts and their codes in the compiled op.
LAYOUTS = {"none": 0, "phases": 1, "random": 2, "boxes": 3}
#: Layouts whose K masks are disjoint and hide every patch exactly once (the scoring layouts).
SCORING_LAYOUTS = ("phases", "random")
FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MODEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last)


def check_images(images: Tensor, name: str = "images") -> None:
    """Checks a batch ``[B, C, H, W]`` of uint8, or of floats in [0, 1]; float values are scanned once."""
    if not isinstance(images, Tensor):
        raise TypeError(f"expected {name} as a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        hint = "; for a single image use images[None]" if images.dim() == 3 else ""
        raise ValueError(f"expected {name} of shape [B, C, H, W], got {images.dim()}-D {tuple(images.shape)}{hint}")
    if images.dtype != torch.uint8 and images.dtype not in FLOATS:
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


def check_keys(keys: Tensor, batch: Optional[int] = None, device: Optional[torch.device] = None) -> None:
    """One int64 key per image (``batch`` of them when given, on ``device`` when given)."""
    if not isinstance(keys, Tensor) or keys.dim() != 1 or keys.dtype != torch.int64:
        got = f"{keys.dtype} tensor of shape {tuple(keys.shape)}" if isinstance(keys, Tensor) else type(keys).__name__
        raise TypeError(f"expected keys as an int64 tensor of shape [B], got {got}")
    if keys.numel() == 0:
        raise ValueError("expected a non-empty batch, got 0 keys")
    if batch is not None and keys.numel() != batch:
        raise ValueError(f"expected one key per image: {batch} images, {keys.numel()} keys")
    if device is not None and keys.device != device:
        raise ValueError(f"images are on {device} but keys on {keys.device}; put both on one device")


def check_seed(seed: int) -> None:
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"expected seed an int in [0, 2**32), got {seed!r}")


def check_patch_grid(size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """The patch grid (Gh, Gw) of ``size`` (H, W) images: H and W must be multiples of ``patch_size``."""
    h, w = size
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1:
        raise ValueError(f"expected a positive int patch_size, got {patch_size!r}")
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"image size {h}x{w} is not divisible by patch_size {patch_size}; resize or crop to a multiple of it"
        )
    return h // patch_size, w // patch_size


def check_layout(layout: str, num_copies: int, patch_size: int, size: tuple[int, int]) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown mask layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not isinstance(num_copies, int) or isinstance(num_copies, bool) or not 1 <= num_copies <= 255:
        raise ValueError(f"expected num_copies an int in [1, 255], got {num_copies!r}")
    if layout == "none" and num_copies != 1:
        raise ValueError(f"layout 'none' hides nothing and needs num_copies=1, got {num_copies}")
    if layout in SCORING_LAYOUTS:
        gh, gw = check_patch_grid(size, patch_size)
        if not 2 <= num_copies <= gh * gw:
            raise ValueError(
                f"layout {layout!r} needs 2 <= num_copies <= patches per image ({gh * gw}), got {num_copies}; "
                "use layout='none' with num_copies=1 for plain reconstruction"
            )
        if layout == "phases" and round(num_copies**0.5) ** 2 != num_copies:
            raise ValueError(f"layout 'phases' needs a square num_copies (4, 9, 16, ...), got {num_copies}")


def check_boxes(box_count: Sequence[int], box_size: Sequence[int], size: tuple[int, int]) -> None:
    (nmin, nmax), (smin, smax) = box_count, box_size
    if not 0 <= nmin <= nmax <= 64:
        raise ValueError(f"expected box_count (min, max) with 0 <= min <= max <= 64, got {tuple(box_count)}")
    if not 1 <= smin <= smax <= min(size):
        raise ValueError(
            f"expected box_size (min, max) with 1 <= min <= max <= min(H, W) = {min(size)}, got {tuple(box_size)}"
        )


def check_normalization(mean, std, channels: int) -> None:
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither")
    if mean is None:
        return
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"expected mean and std with one value per channel ({channels}), got {len(mean)} and {len(std)}")
    if any(not s > 0 for s in std) or any(not abs(v) < float("inf") for v in (*mean, *std)):
        raise ValueError(f"expected finite mean and positive, finite std values, got mean {tuple(mean)}, std {tuple(std)}")


def check_model_dtype(dtype: torch.dtype, memory_format: torch.memory_format) -> None:
    if dtype not in MODEL_DTYPES:
        raise TypeError(f"expected dtype float32, bfloat16 or float16, got {dtype}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"expected memory_format contiguous_format or channels_last, got {memory_format}")


def check_ranking(top_weights: Sequence[float], rest_weight: float, grid: tuple[int, int], patch_size: int) -> None:
    """T = len(top_weights) at most the patch count; every weight finite."""
    t, patches = len(top_weights), grid[0] * grid[1]
    if t > patches:
        raise ValueError(f"{t} top weights given but {grid[0] * patch_size}x{grid[1] * patch_size} images have only "
                         f"{patches} patches of {patch_size}x{patch_size}")
    weights = [*top_weights, rest_weight]
    if not all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for v in weights):
        raise ValueError(f"expected finite ranking weights, got top_weights={tuple(top_weights)}, rest_weight={rest_weight}")


def check_patch_weights(patch_weights: Tensor, grid: tuple[int, int], patch_size: int, device: torch.device) -> None:
    if not isinstance(patch_weights, Tensor) or patch_weights.dtype != torch.float32:
        got = patch_weights.dtype if isinstance(patch_weights, Tensor) else type(patch_weights).__name__
        raise TypeError(f"expected patch_weights as a float32 tensor [Gh, Gw], got {got}")
    if tuple(patch_weights.shape) != tuple(grid):
        raise ValueError(f"expected patch_weights of shape {tuple(grid)} for patch_size {patch_size}, "
                         f"got {tuple(patch_weights.shape)}")
    if patch_weights.device != device:
        raise ValueError(f"images are on {device} but patch_weights on {patch_weights.device}")
    if not bool(torch.isfinite(patch_weights).all()) or bool((patch_weights < 0).any()):
        raise ValueError("expected finite, non-negative patch_weights")


def check_reconstructions(reconstructions: Tensor, images: Tensor, assignment: Optional[Tensor],
                          grid: tuple[int, int], patch_size: int) -> None:
    """Reconstructions ``[K, B, C, H, W]`` or ``[B, C, H, W]`` of ``images``, and the assignment that
    says which copy to read each patch from (required when K > 1)."""
    if not isinstance(reconstructions, Tensor):
        raise TypeError(f"expected reconstructions as a torch.Tensor, got {type(reconstructions).__name__}")
    if reconstructions.dim() not in (4, 5):
        raise ValueError(
            "expected reconstructions of shape [K, B, C, H, W] or [B, C, H, W], "
            f"got {reconstructions.dim()}-D {tuple(reconstructions.shape)}"
        )
    if reconstructions.dtype not in FLOATS:
        raise TypeError(f"expected floating reconstructions (fp32/bf16/fp16), got {reconstructions.dtype}")
    if tuple(reconstructions.shape[-4:]) != tuple(images.shape):
        raise ValueError(
            f"reconstructions {tuple(reconstructions.shape)} do not match images {tuple(images.shape)}: expected "
            f"[K, {', '.join(map(str, images.shape))}] or {list(images.shape)}; check the channel count of the model"
        )
    if reconstructions.device != images.device:
        raise ValueError(f"images are on {images.device} but reconstructions on {reconstructions.device}")
    k = reconstructions.shape[0] if reconstructions.dim() == 5 else 1
    if k == 0:
        raise ValueError("expected at least one reconstruction per image, got K = 0")
    if k == 1 and assignment is None:
        return
    if assignment is None:
        raise ValueError(f"{k} reconstructions per image need the patch assignment [B, Gh, Gw] that says which to read")
    if not isinstance(assignment, Tensor) or assignment.dtype != torch.uint8:
        got = assignment.dtype if isinstance(assignment, Tensor) else type(assignment).__name__
        raise TypeError(f"expected assignment as a uint8 tensor (from ops.patch_assignment), got {got}")
    expected = (images.shape[0], *grid)
    if tuple(assignment.shape) != expected:
        raise ValueError(f"expected assignment of shape {expected} for patch_size {patch_size}, "
                         f"got {tuple(assignment.shape)}")
    if assignment.device != images.device:
        raise ValueError(f"images are on {images.device} but assignment on {assignment.device}")
    top = int(assignment.max())
    if top >= k:
        raise ValueError(
            f"assignment refers to copy {top} but there are only K = {k} reconstructions; "
            "the model output and the masks disagree on num_copies"
        )


def check_model_output(out, expected: tuple[int, ...], copies: int) -> None:
    """A reconstructor's output for ``copies`` masked copies of a batch: a tensor of shape ``expected``."""
    if not isinstance(out, Tensor) or tuple(out.shape) != tuple(expected):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model must map [N, C, H, W] -> [N, C, H, W]; given {tuple(expected)} (K={copies} copies "
                         f"of {expected[0] // copies} images) it returned {got}")


def raise_if_not_finite(scores: Tensor) -> None:
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"non-finite scores for images at batch positions {idx[:10]}{' ...' if len(idx) > 10 else ''}: "
            "the reconstructions contain NaN or inf (a diverged model, or fp16 overflow)"
        )
