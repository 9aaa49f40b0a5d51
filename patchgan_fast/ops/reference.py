"""Pure-PyTorch references of every fast op.

They define the semantics that the C++/CUDA masks op and the Triton patch-score kernel reproduce,
serve as the runtime fallback where those are missing, and are what the tests compare against.
The mask hash mirrors ``csrc/masks_hash.h`` operation for operation on 32-bit unsigned values held in
int64 tensors (products are split into 16-bit halves so that nothing overflows int64).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF
_STREAM_BOX_COUNT = 1
_STREAM_BOX = 2
_STREAM_PERM = 3
_FEISTEL_ROUNDS = 4


def _mul32(h: Tensor, c: int) -> Tensor:
    lo, hi = c & 0xFFFF, c >> 16
    return (h * lo + (((h * hi) & 0xFFFF) << 16)) & _M32


def _fmix32(h: Tensor) -> Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def hash_u32(seed: int, keys: Tensor, stream, index) -> Tensor:
    """32-bit hash of (seed, key, stream, index) as int64 values in [0, 2**32); broadcasts."""
    keys = keys.to(torch.int64)
    h = _fmix32(torch.full_like(keys, (seed ^ 0x9E3779B9) & _M32))
    h = _fmix32(h ^ (keys & _M32))
    h = _fmix32(h ^ ((keys >> 32) & _M32))
    h = _fmix32(h ^ stream)
    return _fmix32(h ^ index)


def _uniform_int(h: Tensor, lo, hi) -> Tensor:
    return lo + torch.remainder(h, hi - lo + 1)


def _feistel_bits(n: int) -> int:
    bits = max(2, (n - 1).bit_length())
    return bits + (bits & 1)


def _feistel_permute(v: Tensor, n: int, seed: int, keys: Tensor) -> Tensor:
    """Seeded bijection of [0, n) per key (keys broadcast against v), with cycle walking."""
    bits = _feistel_bits(n)
    half = bits // 2
    mask = (1 << half) - 1
    todo = torch.ones_like(v, dtype=torch.bool)
    while bool(todo.any()):
        left, right = v >> half, v & mask
        for r in range(_FEISTEL_ROUNDS):
            f = hash_u32(seed, keys, _STREAM_PERM | (r << 4), right) & mask
            left, right = right, left ^ f
        v = torch.where(todo, (left << half) | right, v)
        todo = v >= n
    return v


def patch_assignment_reference(keys: Tensor, grid: tuple[int, int], layout: str, num_copies: int, seed: int) -> Tensor:
    """The copy that hides each patch: ``uint8 [B, Gh, Gw]`` (scoring layouts 'phases' and 'random')."""
    gh, gw = grid
    keys = keys.to(torch.int64)
    gy = torch.arange(gh, device=keys.device).view(1, gh, 1)
    gx = torch.arange(gw, device=keys.device).view(1, 1, gw)
    if layout == "phases":
        s = round(num_copies**0.5)
        out = ((gy % s) * s + (gx % s)).expand(keys.numel(), gh, gw)
    elif layout == "random":
        g = (gy * gw + gx).expand(keys.numel(), gh, gw)
        out = _feistel_permute(g, gh * gw, seed, keys.view(-1, 1, 1)) % num_copies
    else:
        raise ValueError(f"patch_assignment needs layout 'phases' or 'random', got {layout!r}")
    return out.to(torch.uint8).contiguous()


def _boxes_reference(keys: Tensor, num_copies: int, size: tuple[int, int], box_count, box_size, seed: int) -> Tensor:
    """Boxes ``int64 [K, B, max_boxes, 4]`` as (y0, x0, h, w); unused boxes are all zero."""
    (h_img, w_img), (nmin, nmax), (smin, smax) = size, box_count, box_size
    keys = keys.to(torch.int64).view(1, -1, 1)
    k = torch.arange(num_copies, device=keys.device).view(-1, 1, 1)
    j = torch.arange(max(nmax, 1), device=keys.device).view(1, 1, -1)
    sub = k << 4
    count = _uniform_int(hash_u32(seed, keys, _STREAM_BOX_COUNT | sub, torch.zeros_like(k)), nmin, nmax)
    h = _uniform_int(hash_u32(seed, keys, _STREAM_BOX | sub, 4 * j), smin, smax)
    w = _uniform_int(hash_u32(seed, keys, _STREAM_BOX | sub, 4 * j + 1), smin, smax)
    y0 = _uniform_int(hash_u32(seed, keys, _STREAM_BOX | sub, 4 * j + 2), 0, h_img - h)
    x0 = _uniform_int(hash_u32(seed, keys, _STREAM_BOX | sub, 4 * j + 3), 0, w_img - w)
    boxes = torch.stack([y0, x0, h, w], dim=-1)
    return torch.where((j < count).unsqueeze(-1), boxes, torch.zeros_like(boxes))


def build_masks_reference(
    keys: Tensor,
    size: tuple[int, int],
    *,
    layout: str,
    patch_size: int,
    num_copies: int,
    seed: int,
    box_count: tuple[int, int],
    box_size: tuple[int, int],
) -> Tensor:
    """Masks ``bool [K, B, H, W]``, True where a pixel is hidden."""
    h_img, w_img = size
    b = keys.numel()
    if layout == "none":
        return torch.zeros(num_copies, b, h_img, w_img, dtype=torch.bool, device=keys.device)
    if layout == "boxes":
        boxes = _boxes_reference(keys, num_copies, size, box_count, box_size, seed)[..., None, None, :]
        y = torch.arange(h_img, device=keys.device).view(-1, 1)
        x = torch.arange(w_img, device=keys.device).view(1, -1)
        inside = (y >= boxes[..., 0]) & (y < boxes[..., 0] + boxes[..., 2])
        inside = inside & (x >= boxes[..., 1]) & (x < boxes[..., 1] + boxes[..., 3])
        return inside.any(dim=2)
    assign = patch_assignment_reference(keys, (h_img // patch_size, w_img // patch_size), layout, num_copies, seed)
    pixel = assign.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).long()
    k = torch.arange(num_copies, device=keys.device).view(-1, 1, 1, 1)
    return pixel.unsqueeze(0) == k


def to_unit(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Images in [0, 1] as ``dtype``: uint8 divided by 255 (correctly rounded, as the compiled ops and
    the Triton kernel do), floats converted. The one place that turns uint8 pixels into intensities."""
    x = images.to(dtype)
    if images.dtype == torch.uint8:
        # a tensor divisor: torch's CUDA division by a Python scalar multiplies by its reciprocal, which rounds
        # differently from the correctly rounded division the CPU, the C++/CUDA op and the Triton kernel do
        x = x / torch.tensor(255.0, dtype=dtype, device=x.device)
    return x


def normalize_reference(
    images: Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]], dtype: torch.dtype = torch.float32
) -> Tensor:
    """:func:`to_unit`, then (x - mean) / std per channel, computed in ``dtype``."""
    x = to_unit(images, dtype)
    if mean:
        m = torch.tensor(mean, dtype=torch.float32).to(dtype=dtype, device=x.device).view(-1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).to(dtype=dtype, device=x.device).view(-1, 1, 1)
        x = (x - m) / s
    return x


def denormalize(x: Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> Tensor:
    """The inverse of :func:`normalize_reference`'s per-channel step: ``x * std + mean`` in fp32 (``x`` as fp32
    where there is no normalization), e.g. a reconstruction back in [0, 1] intensities."""
    x = x.float()
    if mean:
        m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        x = x * s + m
    return x


def mask_images_reference(
    images: Tensor,
    keys: Tensor,
    *,
    layout: str,
    patch_size: int,
    num_copies: int,
    seed: int,
    box_count: tuple[int, int],
    box_size: tuple[int, int],
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
    fill: float,
    dtype: torch.dtype,
    memory_format: torch.memory_format,
) -> Tensor:
    """K masked, normalized copies ``[K, B, C, H, W]``; hidden pixels take the value ``fill``."""
    x = normalize_reference(images, mean, std)
    masks = build_masks_reference(
        keys, tuple(images.shape[-2:]), layout=layout, patch_size=patch_size, num_copies=num_copies, seed=seed,
        box_count=box_count, box_size=box_size,
    )
    copies = torch.where(masks.unsqueeze(2), torch.tensor(fill, dtype=torch.float32, device=x.device), x.unsqueeze(0))
    k, b, c, h, w = copies.shape
    out = torch.empty((k * b, c, h, w), dtype=dtype, device=images.device, memory_format=memory_format)
    out.copy_(copies.reshape(k * b, c, h, w))
    return out.view(k, b, c, h, w)


def squared_errors_reference(
    images: Tensor,
    reconstructions: Tensor,
    assignment: Optional[Tensor],
    *,
    patch_size: int,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``[B, C, H, W]`` squared error of each normalized pixel against its reconstruction in the copy
    that hid it (``assignment``; the only copy when K = 1), computed in ``dtype``."""
    x = normalize_reference(images, mean, std, dtype)
    return (x - infilled_reference(reconstructions, assignment, patch_size=patch_size).to(dtype)).square()


def infilled_reference(reconstructions: Tensor, assignment: Optional[Tensor], *, patch_size: int) -> Tensor:
    """``[B, C, H, W]``: each pixel from the reconstruction of the copy that hid it (``assignment``
    ``[B, Gh, Gw]``; the only copy when K = 1), in the reconstructions' dtype. One gather over patch tiles:
    the index is the patch assignment broadcast over the pixels, never a per-pixel index map."""
    r = reconstructions if reconstructions.dim() == 5 else reconstructions.unsqueeze(0)
    if assignment is None or r.shape[0] == 1:
        return r[0]
    k, b, c, h, w = r.shape
    p = patch_size
    tiles = r.unflatten(4, (w // p, p)).unflatten(3, (h // p, p))  # [K, B, C, Gh, P, Gw, P]
    index = assignment.long()[None, :, None, :, None, :, None].expand(1, b, c, h // p, p, w // p, p)
    return tiles.gather(0, index)[0].reshape(b, c, h, w)


def patch_scores_reference(
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
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Ranked patch scores, computed in ``dtype`` (the tests use float64); ``patch_weights`` [Gh, Gw]
    multiply the patch errors before ranking.

    Returns ``(scores [B], patch_errors [B, Gh, Gw])``; both are float32 unless ``dtype`` is float64.
    """
    sq = squared_errors_reference(images, reconstructions, assignment, patch_size=patch_size, mean=mean, std=std,
                                  dtype=dtype)
    b, c, h, w = sq.shape
    p = patch_size
    err = sq.view(b, c, h // p, p, w // p, p).mean(dim=(1, 3, 5))
    scores = rank_patch_errors(err, top_weights=top_weights, rest_weight=rest_weight, patch_weights=patch_weights)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return scores.to(out_dtype), err.to(out_dtype)


def map_scores_reference(
    maps: Tensor,
    *,
    patch_size: int,
    top_weights: Sequence[float],
    rest_weight: float,
    patch_weights: Optional[Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Patch means of per-pixel error maps ``[B, H, W]`` and their ranked score (eq. 5), computed in ``dtype``:
    ``(scores [B], patch_errors [B, Gh, Gw])``, float32 unless ``dtype`` is float64."""
    b, h, w = maps.shape
    p = patch_size
    err = maps.to(dtype).view(b, h // p, p, w // p, p).mean(dim=(2, 4))
    scores = rank_patch_errors(err, top_weights=top_weights, rest_weight=rest_weight, patch_weights=patch_weights)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return scores.to(out_dtype), err.to(out_dtype)


def rank_patch_errors(
    errors: Tensor, *, top_weights: Sequence[float], rest_weight: float, patch_weights: Optional[Tensor] = None
) -> Tensor:
    """Eq. 5 on given patch errors ``[B, Gh, Gw]``: multiplied by ``patch_weights`` [Gh, Gw], sorted,
    ``top_weights`` on the largest and ``rest_weight`` on the others; ``[B]`` in the errors' dtype."""
    dtype = errors.dtype
    weighted = errors if patch_weights is None else errors * patch_weights.to(device=errors.device, dtype=dtype)
    ranked = weighted.flatten(1).sort(dim=1, descending=True).values
    weights = torch.full((ranked.shape[1],), float(rest_weight), dtype=dtype, device=errors.device)
    t = len(top_weights)
    if t:
        weights[:t] = torch.tensor(list(top_weights), dtype=torch.float32).to(dtype=dtype, device=errors.device)
    return (ranked * weights).sum(dim=1)
