"""Fused per-patch squared error and ranking reduction (paper eq. 2 and 5) in Triton.

Why it is shaped this way: scoring is memory bound. Every byte of the image and of one
reconstruction's worth of the K copies is read exactly once: program (b, s) walks a band of patch
rows of image b in tiles of [BLOCK_Y, BLOCK_GW, BLOCK_J] elements (BLOCK_GW patches side by side, BLOCK_J
elements of each patch's row) and takes every patch from the copy in which the masks op hid it (a
per-patch pointer offset, so reads stay contiguous within a patch row). The copy indices of the next tile
are loaded one tile ahead, so the reconstruction loads never wait for them. For channels_last
reconstructions a tile row holds a patch row's pixels and channels together (P x C contiguous elements)
instead of one load per channel at stride C. Squares accumulate in fp32, x is normalized in registers
(uint8 /255, then per-channel mean/std), and each patch's mean error is written to the patch map. When
one program owns a whole image (the usual case: batches are much larger than the number of SMs) it then
ranks that image's patch errors itself, re-reading only its own [G] errors after a block barrier;
otherwise a second tiny kernel ranks them. On a GPU the tile shape and warps are autotuned once per
(P, channels, Gw, dtypes) among :func:`tuning_configs`; the interpreter takes :func:`_tile`'s choice.

Small patches: when P x element size is under 32 bytes (P = 8 in bf16 with one channel, P = 4), one
patch row of one copy is less than a memory sector, and its neighbour in the same sector was hidden in
another copy, so up to half of each reconstruction sector read is not used. No layout of the K copies
avoids that while neighbouring patches are hidden in different copies; hiding runs of patches together
would, but changes what the reconstructor in-fills (the detector), so it is not done.

Ranking: score = sum_{i<T} w_i * e_(i) + rest_weight * sum_{i>=T} e_(i), with e_(i) sorted descending
(each patch error first multiplied by its position's weight when patch weights are given).
It is computed as rest_weight * sum(e) + sum_{i<T} (w_i - rest_weight) * e_(i); for T <= 8 the top T
values come from T max-reductions (ties remove one element at a time, so equal values give equal
scores whichever index is taken), for larger T from a bitonic sort of the padded row.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

_TILE = 4096  # elements per loaded tile, without autotuning
_AUTOTUNE = os.environ.get("PATCHGAN_FAST_AUTOTUNE", "1") != "0"  # 0: _tile's choice on the GPU too


@triton.jit
def _rank_image(E_row, W_ptr, PW_ptr, G, rest_weight, T: tl.constexpr, BLOCK_G: tl.constexpr, HAS_PW: tl.constexpr):
    """Ranked score of one image from its G patch errors at E_row (times the position weights at
    PW_ptr when HAS_PW)."""
    offs = tl.arange(0, BLOCK_G)
    valid = offs < G
    e = tl.load(E_row + offs, mask=valid, other=0.0)
    if HAS_PW:
        e = e * tl.load(PW_ptr + offs, mask=valid, other=0.0)
    score = rest_weight * tl.sum(e, axis=0)
    if T > 0:
        if T <= 8:
            v = tl.where(valid, e, -1.0)
            for i in tl.static_range(T):
                top = tl.max(v, axis=0)
                first = tl.min(tl.where(v == top, offs, BLOCK_G), axis=0)
                score += (tl.load(W_ptr + i) - rest_weight) * top
                v = tl.where(offs == first, -1.0, v)
        else:
            ranked = tl.sort(tl.where(valid, e, -1.0), descending=True)
            w = tl.load(W_ptr + offs, mask=offs < T, other=rest_weight)
            score += tl.sum(tl.where(offs < T, (w - rest_weight) * ranked, 0.0), axis=0)
    return score


@triton.jit
def _patch_error_kernel(
    X_ptr, R_ptr, A_ptr, MEAN_ptr, ISTD_ptr, W_ptr, PW_ptr, E_ptr, S_ptr,
    C, Gh, Gw, rows_per_prog, rest_weight, inv_count,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_rk, stride_rb, stride_rc, stride_rh, stride_rw,
    P: tl.constexpr, TILE_C: tl.constexpr, BLOCK_J: tl.constexpr,
    X_IS_U8: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ASSIGN: tl.constexpr,
    FUSE_RANK: tl.constexpr, T: tl.constexpr, BLOCK_G: tl.constexpr, HAS_PW: tl.constexpr,
    BLOCK_Y: tl.constexpr, BLOCK_GW: tl.constexpr,
):
    b = tl.program_id(0)
    gy_lo = tl.program_id(1) * rows_per_prog
    gy_hi = tl.minimum(gy_lo + rows_per_prog, Gh)
    G = Gh * Gw
    b64 = b.to(tl.int64)
    x_img = X_ptr + b64 * stride_xb
    r_img = R_ptr + b64 * stride_rb
    e_img = E_ptr + b64 * G
    a_img = A_ptr + b64 * G

    offs_y = tl.arange(0, BLOCK_Y)
    offs_q = tl.arange(0, BLOCK_GW)
    # Element j of a patch's row: pixel column j // TILE_C, channel c0 + j % TILE_C (TILE_C = C for
    # channels_last reconstructions, so a patch row's pixels and channels are one contiguous run; else 1).
    offs_j = tl.arange(0, BLOCK_J)
    j_ok = offs_j < P * TILE_C
    pix = offs_j // TILE_C
    chan = offs_j % TILE_C
    col_tiles = tl.cdiv(Gw, BLOCK_GW)
    n_tiles = (gy_hi - gy_lo) * col_tiles
    # the copy that hid each patch of the next tile is loaded one tile ahead, so the reconstruction loads do
    # not wait for it
    if HAS_ASSIGN:
        k_next = tl.load(a_img + gy_lo * Gw + offs_q, mask=offs_q < Gw, other=0)
    else:
        k_next = tl.zeros((BLOCK_GW,), dtype=tl.uint8)
    for t in range(0, n_tiles):
        gy = gy_lo + t // col_tiles
        gx = (t % col_tiles) * BLOCK_GW + offs_q
        k = k_next.to(tl.int64)
        if HAS_ASSIGN:
            nt = tl.minimum(t + 1, n_tiles - 1)  # the last tile loads its own row again: stays in bounds
            gx_next = (nt % col_tiles) * BLOCK_GW + offs_q
            k_next = tl.load(a_img + (gy_lo + nt // col_tiles) * Gw + gx_next, mask=gx_next < Gw, other=0)
        col_ok = (gx < Gw)[:, None] & j_ok[None, :]
        cols = ((gx * P)[:, None] + pix[None, :]).to(tl.int64)  # [BLOCK_GW, BLOCK_J] pixel columns
        acc = tl.zeros((BLOCK_Y, BLOCK_GW, BLOCK_J), dtype=tl.float32)
        for c0 in range(0, C, TILE_C):
            ch = (c0 + chan).to(tl.int64)
            if HAS_NORM:
                mu = tl.load(MEAN_ptr + ch, mask=j_ok, other=0.0)[None, None, :]
                istd = tl.load(ISTD_ptr + ch, mask=j_ok, other=0.0)[None, None, :]
            x_cols = cols * stride_xw + (ch * stride_xc)[None, :]
            r_cols = cols * stride_rw + (ch * stride_rc)[None, :]
            if HAS_ASSIGN:
                r_cols += (k * stride_rk)[:, None]
            for y0 in range(0, P, BLOCK_Y):
                ys = (gy * P + y0 + offs_y).to(tl.int64)
                m = (y0 + offs_y < P)[:, None, None] & col_ok[None, :, :]
                xv = tl.load(x_img + (ys * stride_xh)[:, None, None] + x_cols[None, :, :], mask=m, other=0)
                xv = xv.to(tl.float32)
                if X_IS_U8:
                    xv = xv / 255.0
                if HAS_NORM:
                    xv = (xv - mu) * istd
                rv = tl.load(r_img + (ys * stride_rh)[:, None, None] + r_cols[None, :, :], mask=m, other=0)
                d = tl.where(m, xv - rv.to(tl.float32), 0.0)
                acc += d * d
        err = tl.sum(tl.sum(acc, axis=2), axis=0) * inv_count
        tl.store(e_img + gy * Gw + gx, err, mask=gx < Gw)
    if FUSE_RANK:
        tl.debug_barrier()  # the patch errors written above by other threads of this program
        tl.store(S_ptr + b, _rank_image(e_img, W_ptr, PW_ptr, G, rest_weight, T, BLOCK_G, HAS_PW))


@triton.jit
def _rank_kernel(E_ptr, W_ptr, PW_ptr, S_ptr, G, rest_weight, T: tl.constexpr, BLOCK_G: tl.constexpr,
                 HAS_PW: tl.constexpr):
    b = tl.program_id(0)
    tl.store(S_ptr + b, _rank_image(E_ptr + b.to(tl.int64) * G, W_ptr, PW_ptr, G, rest_weight, T, BLOCK_G, HAS_PW))


@triton.jit
def _map_kernel(
    M_ptr, W_ptr, PW_ptr, E_ptr, S_ptr, Gh, Gw, rest_weight, inv_count, stride_mb, stride_mh, stride_mw,
    P: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_GW: tl.constexpr, BLOCK_P: tl.constexpr,
    T: tl.constexpr, BLOCK_G: tl.constexpr, HAS_PW: tl.constexpr,
):
    """Patch means of one image's per-pixel error map (another error measure's, e.g. MSGMS) and its ranked
    score: the per-patch reduction and the ranking of the fused kernel, on a map instead of x and x_hat."""
    b = tl.program_id(0)
    G = Gh * Gw
    m_img = M_ptr + b.to(tl.int64) * stride_mb
    e_img = E_ptr + b.to(tl.int64) * G
    offs_y = tl.arange(0, BLOCK_Y)
    offs_q = tl.arange(0, BLOCK_GW)
    offs_p = tl.arange(0, BLOCK_P)
    for gy in range(0, Gh):
        for gx0 in range(0, Gw, BLOCK_GW):
            gx = gx0 + offs_q
            col_ok = (gx < Gw)[:, None] & (offs_p < P)[None, :]
            cols = ((gx * P)[:, None] + offs_p[None, :]).to(tl.int64) * stride_mw
            acc = tl.zeros((BLOCK_Y, BLOCK_GW, BLOCK_P), dtype=tl.float32)
            for y0 in range(0, P, BLOCK_Y):
                ys = gy * P + y0 + offs_y
                m = (y0 + offs_y < P)[:, None, None] & col_ok[None, :, :]
                off = (ys.to(tl.int64) * stride_mh)[:, None, None] + cols[None, :, :]
                acc += tl.load(m_img + off, mask=m, other=0.0).to(tl.float32)
            err = tl.sum(tl.sum(acc, axis=2), axis=0) * inv_count
            tl.store(e_img + gy * Gw + gx, err, mask=gx < Gw)
    tl.debug_barrier()  # the patch errors written above by other threads of this program
    tl.store(S_ptr + b, _rank_image(e_img, W_ptr, PW_ptr, G, rest_weight, T, BLOCK_G, HAS_PW))


@functools.lru_cache(maxsize=64)
def _device_constants(values: tuple, device: torch.device) -> Tensor:
    return torch.tensor(values if values else (0.0,), dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=16)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _tile(p: int, gw: int, tile_c: int = 1, pixels: int = _TILE) -> tuple[int, int, int]:
    """(BLOCK_Y, BLOCK_GW, BLOCK_J): a tile of up to ``pixels`` elements, BLOCK_GW patches side by side in a
    patch row, BLOCK_J >= P * tile_c elements of each patch's row (its pixels times the channels in the tile)."""
    block_j = triton.next_power_of_2(p * tile_c)
    block_gw = min(triton.next_power_of_2(gw), max(1, 1024 // block_j))
    return min(triton.next_power_of_2(p), max(1, pixels // (block_gw * block_j))), block_gw, block_j


def tile_channels(reconstructions: Tensor) -> int:
    """Channels a tile holds: all of them (at most 4) when the reconstructions are channels_last, so a patch
    row's pixels and channels are read as one contiguous run instead of one load per channel at stride C."""
    c = reconstructions.shape[-3]
    return c if 1 < c <= 4 and reconstructions.stride(-3) == 1 else 1


def tuning_configs(p: int, gw: int, tile_c: int) -> list[triton.Config]:
    """The autotuner's candidates for one (P, channels in the tile, Gw): tiles of 2,048, 4,096 and 8,192
    elements at 4 and 8 warps (duplicates removed where the patch is too small to fill the larger tiles)."""
    seen, configs = set(), []
    for pixels in (2048, 4096, 8192):
        block_y, block_gw, _ = _tile(p, gw, tile_c, pixels)
        for warps in (4, 8):
            if (block_y, block_gw, warps) not in seen:
                seen.add((block_y, block_gw, warps))
                configs.append(triton.Config({"BLOCK_Y": block_y, "BLOCK_GW": block_gw}, num_warps=warps))
    return configs


def _all_configs() -> list[triton.Config]:
    """Every tile shape the pruner may keep (it keeps :func:`tuning_configs` of the call)."""
    sizes = [2**i for i in range(11)]
    return [triton.Config({"BLOCK_Y": y, "BLOCK_GW": q}, num_warps=w) for y in sizes for q in sizes for w in (4, 8)]


def _prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    wanted = {(c.kwargs["BLOCK_Y"], c.kwargs["BLOCK_GW"], c.num_warps)
              for c in tuning_configs(args["P"], args["Gw"], args["TILE_C"])}
    return [c for c in configs if (c.kwargs["BLOCK_Y"], c.kwargs["BLOCK_GW"], c.num_warps) in wanted]


# On a GPU the tile and warps are measured once per (P, channels, Gw, dtypes) and kept (Triton adds the dtypes
# of the tensor arguments to the key); the interpreter, which cannot time anything, takes _tile's choice.
_patch_error_tuned = triton.autotune(configs=_all_configs(), key=["P", "TILE_C", "C", "Gw"],
                                     prune_configs_by={"early_config_prune": _prune})(_patch_error_kernel)


def _outputs(b: int, gh: int, gw: int, device: torch.device) -> tuple[Tensor, Tensor]:
    return (torch.empty((b,), dtype=torch.float32, device=device),
            torch.empty((b, gh, gw), dtype=torch.float32, device=device))


def device_constants(top_weights: Sequence[float], mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                     device: torch.device) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(top weights, mean, 1/std) as fp32 tensors on ``device``, made once per setting and device (the weights
    tensor holds one 0 when there are none; mean and 1/std are None without normalization)."""
    weights = _device_constants(tuple(float(v) for v in top_weights), device)
    if not mean:
        return weights, None, None
    return (weights, _device_constants(tuple(float(v) for v in mean), device),
            _device_constants(tuple(1.0 / float(v) for v in std), device))


def patch_scores_triton(
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
    rows_per_program: Optional[int] = None,
    config: Optional[triton.Config] = None,
) -> tuple[Tensor, Tensor]:
    """Launches the fused kernel; arguments are assumed checked (see ``patchgan_fast.ops.patch_scores``).

    Args:
        images (Tensor[B, C, H, W]): uint8 or float, any strides.
        reconstructions (Tensor[K, B, C, H, W] or Tensor[B, C, H, W]): fp32/bf16/fp16, any strides.
        assignment (Tensor[B, Gh, Gw] uint8, optional): copy that hid each patch; needed when K > 1.
        patch_weights (Tensor[Gh, Gw] fp32 contiguous, optional): multiply the patch errors before ranking.
        rows_per_program: patch rows per program; default: a whole image per program when the batch
            fills the device, fewer otherwise (then a second kernel does the ranking).
        config: a fixed tile and warps (one of :func:`tuning_configs`); default: autotuned on a GPU.

    Returns:
        (scores Tensor[B] fp32, patch_errors Tensor[B, Gh, Gw] fp32)
    """
    weights, mean_t, istd_t = device_constants(top_weights, mean, std, images.device)
    return launch_patch_scores(images, reconstructions, assignment, weights, mean_t, istd_t, patch_weights,
                               patch_size=patch_size, top_count=len(top_weights), rest_weight=rest_weight,
                               rows_per_program=rows_per_program, config=config)


def _direct(kernel):
    return kernel


def launch_patch_scores(
    images: Tensor,
    reconstructions: Tensor,
    assignment: Optional[Tensor],
    weights: Tensor,
    mean: Optional[Tensor],
    istd: Optional[Tensor],
    patch_weights: Optional[Tensor],
    *,
    patch_size: int,
    top_count: int,
    rest_weight: float,
    rows_per_program: Optional[int] = None,
    config: Optional[triton.Config] = None,
    launch: Callable = _direct,
) -> tuple[Tensor, Tensor]:
    """:func:`patch_scores_triton` with its constants as device tensors (:func:`device_constants`): the body of
    the ``patchgan_fast::patch_scores`` op, whose ``launch`` is ``torch.library.wrap_triton``. ``config`` fixes the
    tile (BLOCK_Y, BLOCK_GW) and warps; by default the autotuner picks them on a GPU and :func:`_tile` elsewhere."""
    r = reconstructions if reconstructions.dim() == 5 else reconstructions.unsqueeze(0)
    b, c, h, w = images.shape
    p = patch_size
    gh, gw = h // p, w // p
    g = gh * gw
    device = images.device
    scores, errors = _outputs(b, gh, gw, device)
    tile_c = tile_channels(r)
    block_g = triton.next_power_of_2(g)
    if rows_per_program is None:
        target = 2 * _num_sms(device)
        splits = 1 if b >= target else min(gh, triton.cdiv(target, b))
        rows_per_program = triton.cdiv(gh, splits)
    rows_per_program = max(1, min(int(rows_per_program), gh))
    splits = triton.cdiv(gh, rows_per_program)
    fuse = splits == 1

    has_assign = assignment is not None and r.shape[0] > 1
    has_norm = mean is not None
    t = top_count
    mean_t = mean if has_norm else weights  # unused without normalization
    istd_t = istd if has_norm else weights
    a = assignment.contiguous() if has_assign else weights  # unused when not has_assign
    has_pw = patch_weights is not None
    pw = patch_weights if has_pw else weights  # unused when not has_pw
    if config is None and not (device.type == "cuda" and _AUTOTUNE):
        block_y, block_gw, _ = _tile(p, gw, tile_c)
        config = triton.Config({"BLOCK_Y": block_y, "BLOCK_GW": block_gw},
                               num_warps=8 if block_y * block_gw * triton.next_power_of_2(p * tile_c) >= 2048 else 4)
    kernel, meta = (_patch_error_tuned, {}) if config is None else (_patch_error_kernel,
                                                                  {**config.kwargs, "num_warps": config.num_warps})
    # launch on the tensors' GPU, whichever is current (Triton launches on the current device)
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:
        launch(kernel)[(b, splits)](
            images, r, a, mean_t, istd_t, weights, pw, errors, scores,
            c, gh, gw, rows_per_program, float(rest_weight), 1.0 / (c * p * p),
            *images.stride(), *r.stride(),
            P=p, TILE_C=tile_c, BLOCK_J=triton.next_power_of_2(p * tile_c),
            X_IS_U8=images.dtype == torch.uint8, HAS_NORM=has_norm, HAS_ASSIGN=has_assign,
            FUSE_RANK=fuse, T=t, BLOCK_G=block_g, HAS_PW=has_pw, **meta,
        )
        if not fuse:
            launch(_rank_kernel)[(b,)](errors, weights, pw, scores, g, float(rest_weight), T=t, BLOCK_G=block_g,
                                       HAS_PW=has_pw, num_warps=4 if block_g <= 1024 else 8)
    return scores, errors


def map_scores_triton(
    maps: Tensor,
    *,
    patch_size: int,
    top_weights: Sequence[float],
    rest_weight: float,
    patch_weights: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Launches the map kernel; arguments are assumed checked (see ``patchgan_fast.ops.map_scores``).

    Args:
        maps (Tensor[B, H, W]): per-pixel errors, any float dtype and strides.
        patch_weights (Tensor[Gh, Gw] fp32 contiguous, optional): multiply the patch errors before ranking.

    Returns:
        (scores Tensor[B] fp32, patch_errors Tensor[B, Gh, Gw] fp32)
    """
    b, h, w = maps.shape
    p = patch_size
    gh, gw = h // p, w // p
    device = maps.device
    scores, errors = _outputs(b, gh, gw, device)
    block_y, block_gw, block_p = _tile(p, gw)
    weights = _device_constants(tuple(float(v) for v in top_weights), device)
    has_pw = patch_weights is not None
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:
        _map_kernel[(b,)](
            maps, weights, patch_weights if has_pw else weights, errors, scores, gh, gw, float(rest_weight),
            1.0 / (p * p), *maps.stride(), P=p, BLOCK_Y=block_y, BLOCK_GW=block_gw, BLOCK_P=block_p,
            T=len(top_weights), BLOCK_G=triton.next_power_of_2(gh * gw), HAS_PW=has_pw,
            num_warps=8 if block_y * block_gw * block_p >= 2048 else 4,
        )
    return scores, errors
