"""The fused patch-score kernel (Triton; interpreter on CPU) against the float64 reference.

Every test runs the kernel on ``kernel_device()``: CUDA tensors on a GPU machine, CPU tensors in the
interpreter without one."""

import random

import pytest
import torch
from conftest import kernel_device
from helpers import random_images
from hypothesis import given, settings
from hypothesis import strategies as st

from patchgan_fast.ops import reference as R
from patchgan_fast import ops
from patchgan_fast.kernels import patch_scores_triton

# reconstruction dtype -> (atol, rtol) of kernel vs float64 reference. Both read the same stored
# values; the gap is the kernel's fp32 accumulation and its multiply by 1/std.
TOL = {torch.float32: (1e-6, 2e-5), torch.bfloat16: (1e-6, 2e-5), torch.float16: (1e-6, 2e-5)}

# (B, C, H, W, P, K, T, x dtype, recon dtype, channels_last, rows_per_program)
SCORE_CASES = [
    (3, 3, 32, 32, 8, 4, 2, torch.uint8, torch.float32, False, None),  # power-of-two G = 16, fused ranking
    (2, 1, 24, 40, 8, 4, 2, torch.uint8, torch.bfloat16, False, None),  # odd G = 15 (3x5), padded BLOCK_G
    (2, 3, 40, 24, 4, 1, 1, torch.float32, torch.float32, False, None),  # K = 1, float x, T = 1
    (2, 1, 16, 16, 4, 4, 0, torch.uint8, torch.float16, False, None),  # T = 0 (rest weight only)
    (2, 3, 16, 16, 4, 4, 16, torch.uint8, torch.float32, False, None),  # T = all (sort path)
    (2, 3, 24, 24, 4, 9, 12, torch.float32, torch.bfloat16, True, None),  # channels_last, K = 9, sort T = 12
    (2, 1, 12, 18, 6, 4, 2, torch.uint8, torch.float32, False, None),  # P = 6, not a power of two
    (1, 3, 32, 48, 8, 4, 2, torch.uint8, torch.float32, False, 1),  # rows split over programs + rank kernel
    (3, 1, 32, 32, 4, 2, 9, torch.uint8, torch.float32, True, 3),  # split rows, uneven band, sort T = 9
    (2, 1, 8, 1024, 8, 4, 2, torch.uint8, torch.float32, False, None),  # Gw = 128 > BLOCK_GW: several column tiles
]


DEV = kernel_device()


def _inputs(b, c, h, w, p, k, x_dtype, r_dtype, channels_last, layout="random", seed=0, device=DEV):
    x = random_images((b, c, h, w), x_dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    r = torch.rand((k, b, c, h, w), generator=g).to(r_dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        r = r.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(k, b, c, h, w)
    a = None
    if k > 1:
        keys = torch.arange(b, dtype=torch.int64)
        lay = "phases" if round(k**0.5) ** 2 == k and layout == "phases" else "random"
        a = ops.patch_assignment(keys, (h // p, w // p), layout=lay, num_copies=k, seed=seed).to(device)
    return x.to(device), r.to(device), a


def _weights(t, seed=0):
    rng = random.Random(seed)
    return tuple(round(rng.uniform(0.5, 2.0), 3) for _ in range(t))


def _assert_close(got, ref, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.double().cpu(), ref.cpu(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("device", [DEV])
@pytest.mark.parametrize("b,c,h,w,p,k,t,x_dtype,r_dtype,cl,rows", SCORE_CASES)
def test_kernel_matches_float64_reference(device, b, c, h, w, p, k, t, x_dtype, r_dtype, cl, rows):
    x, r, a = _inputs(b, c, h, w, p, k, x_dtype, r_dtype, cl)
    x, r = x.to(device), r.to(device)
    a = a.to(device) if a is not None else None
    norm = dict(mean=tuple(0.3 + 0.1 * i for i in range(c)), std=tuple(0.2 + 0.1 * i for i in range(c)))
    kw = dict(patch_size=p, top_weights=_weights(t), rest_weight=0.25)
    scores, errors = patch_scores_triton(x, r if k > 1 else r[0], a, rows_per_program=rows, **kw, **norm)
    ref_s, ref_e = R.patch_scores_reference(x, r, a, dtype=torch.float64, **kw, **norm)
    assert scores.shape == (b,) and errors.shape == (b, h // p, w // p)
    assert scores.dtype == errors.dtype == torch.float32 and scores.device == x.device
    _assert_close(errors, ref_e, r_dtype)
    _assert_close(scores, ref_s, r_dtype)


def _naive_scores(x, r, assignment, p, top, rest):
    """Loop-by-loop transcription of eq. 2 and eq. 5, independent of the reference's tensor tricks."""
    b, c, h, w = x.shape
    xs = x.double() / 255.0
    out = []
    for i in range(b):
        errs = []
        for gy in range(h // p):
            for gx in range(w // p):
                k = int(assignment[i, gy, gx]) if assignment is not None else 0
                d = xs[i, :, gy * p:(gy + 1) * p, gx * p:(gx + 1) * p] - r[k, i, :, gy * p:(gy + 1) * p, gx * p:(gx + 1) * p].double()
                errs.append(float((d * d).mean()))
        ranked = sorted(errs, reverse=True)
        top = [float(torch.tensor(v, dtype=torch.float32)) for v in top]  # weights are fp32 on every path
        out.append(sum(wi * e for wi, e in zip(top, ranked)) + rest * sum(ranked[len(top):]))
    return torch.tensor(out, dtype=torch.float64, device=x.device)


def test_reference_matches_a_naive_loop():
    x, r, a = _inputs(3, 2, 12, 16, 4, 4, torch.uint8, torch.float32, False)
    for top, rest in [((1.1, 1.0), 0.0), ((), 1.0), ((2.0, 1.5, 1.0), 0.1)]:
        ref, _ = R.patch_scores_reference(x, r, a, patch_size=4, top_weights=top, rest_weight=rest, dtype=torch.float64)
        torch.testing.assert_close(ref, _naive_scores(x, r, a, 4, top, rest), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("t", [1, 2, 5, 16])
def test_ties_rank_by_value(t):
    """Many equal patch errors: whichever tied patch is taken first, the score is the same."""
    b, c, h, w, p = 2, 1, 16, 16, 4
    x = torch.zeros((b, c, h, w), dtype=torch.uint8, device=DEV)
    r = torch.zeros((1, b, c, h, w), device=DEV)
    r[:, :, :, ::8, :] = 0.5  # every other patch row has the same nonzero error
    r[:, 1, :, 4:8, 4:8] = 0.75  # one larger patch in image 1
    weights = _weights(t, seed=t)
    scores, errors = patch_scores_triton(x, r, None, patch_size=p, top_weights=weights, rest_weight=0.5)
    ref_s, ref_e = R.patch_scores_reference(x, r, None, patch_size=p, top_weights=weights, rest_weight=0.5,
                                            dtype=torch.float64)
    _assert_close(errors, ref_e, torch.float32)
    _assert_close(scores, ref_s, torch.float32)


def test_4096_patches_per_image():
    """G = 4096 (256x256 image, P = 4): the largest padded row, both ranking paths."""
    x, r, a = _inputs(1, 1, 256, 256, 4, 4, torch.uint8, torch.bfloat16, False)
    for top in (_weights(2), _weights(40)):
        kw = dict(patch_size=4, top_weights=top, rest_weight=1.0)
        scores, errors = patch_scores_triton(x, r, a, **kw)
        ref_s, ref_e = R.patch_scores_reference(x, r, a, dtype=torch.float64, **kw)
        _assert_close(errors, ref_e, torch.bfloat16)
        _assert_close(scores, ref_s, torch.bfloat16)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3), c=st.sampled_from([1, 3]), gh=st.integers(1, 6), gw=st.integers(1, 6),
    p=st.sampled_from([2, 3, 4, 8]), k=st.integers(1, 4), t_frac=st.floats(0, 1), rest=st.floats(0, 2),
    x_u8=st.booleans(), r_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    cl=st.booleans(), seed=st.integers(0, 1000),
)
def test_kernel_property_random_shapes(b, c, gh, gw, p, k, t_frac, rest, x_u8, r_dtype, cl, seed):
    k = min(k, gh * gw)
    x, r, a = _inputs(b, c, gh * p, gw * p, p, k, torch.uint8 if x_u8 else torch.float32, r_dtype, cl, seed=seed)
    kw = dict(patch_size=p, top_weights=_weights(int(t_frac * gh * gw), seed), rest_weight=rest)
    scores, errors = patch_scores_triton(x, r, a, **kw)
    ref_s, ref_e = R.patch_scores_reference(x, r, a, dtype=torch.float64, **kw)
    _assert_close(errors, ref_e, r_dtype)
    _assert_close(scores, ref_s, r_dtype)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.integers(0, 12))
def test_score_ignores_where_the_patches_are(seed, t):
    """Eq. 5 ranks patch errors: shuffling the patches of image and reconstruction alike keeps the score."""
    x, r, _ = _inputs(2, 1, 16, 12, 4, 1, torch.uint8, torch.float32, False, seed=seed)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(seed)).to(DEV)

    def shuffle(img):  # [..., 16, 12] -> patches (4x3 grid of 4x4) permuted
        lead = img.shape[:-2]
        tiles = img.reshape(*lead, 4, 4, 3, 4).movedim(-3, -2).reshape(*lead, 12, 4, 4)[..., perm, :, :]
        return tiles.reshape(*lead, 4, 3, 4, 4).movedim(-2, -3).reshape(*lead, 16, 12)

    kw = dict(patch_size=4, top_weights=_weights(t, seed), rest_weight=0.3)
    s1, _ = patch_scores_triton(x, r, None, **kw)
    s2, _ = patch_scores_triton(shuffle(x), shuffle(r), None, **kw)
    torch.testing.assert_close(s1, s2, atol=1e-6, rtol=1e-5)


def test_public_op_uses_the_kernel_and_agrees_with_the_reference(monkeypatch):
    x, r, a = _inputs(2, 3, 16, 16, 4, 4, torch.uint8, torch.bfloat16, False)
    kw = dict(patch_size=4, top_weights=(1.1, 1.0), rest_weight=0.0)
    monkeypatch.setenv("PATCHGAN_FAST_BACKEND", "native")
    native = ops.patch_scores(x, r, a, **kw)
    monkeypatch.setenv("PATCHGAN_FAST_BACKEND", "reference")
    reference = ops.patch_scores(x, r, a, **kw)
    for got, ref in zip(native, reference):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=2e-5)


def _position_weights(gh, gw, seed=0):
    return (torch.rand((gh, gw), generator=torch.Generator().manual_seed(seed)) * 2).to(DEV)


@pytest.mark.parametrize("device", [DEV])
@pytest.mark.parametrize("case", [SCORE_CASES[i] for i in (0, 1, 3, 4, 7, 8)])
def test_kernel_applies_patch_weights_before_ranking(device, case):
    b, c, h, w, p, k, t, x_dtype, r_dtype, cl, rows = case
    x, r, a = _inputs(b, c, h, w, p, k, x_dtype, r_dtype, cl)
    x, r = x.to(device), r.to(device)
    a = a.to(device) if a is not None else None
    pw = _position_weights(h // p, w // p).to(device)
    kw = dict(patch_size=p, top_weights=_weights(t), rest_weight=0.25)
    scores, errors = patch_scores_triton(x, r, a, rows_per_program=rows, patch_weights=pw, **kw)
    ref_s, ref_e = R.patch_scores_reference(x, r, a, dtype=torch.float64, patch_weights=pw, **kw)
    _assert_close(errors, ref_e, r_dtype)  # the patch errors stay unweighted
    _assert_close(scores, ref_s, r_dtype)
    plain, _ = R.patch_scores_reference(x, r, a, dtype=torch.float64, **kw)
    assert not torch.allclose(ref_s, plain)


def test_patch_weights_reference_matches_a_naive_loop():
    x, r, a = _inputs(3, 2, 12, 16, 4, 4, torch.uint8, torch.float32, False)
    pw = _position_weights(3, 4, seed=5)
    ones, _ = R.patch_scores_reference(x, r, a, patch_size=4, top_weights=(1.1, 1.0), rest_weight=0.0,
                                       patch_weights=torch.ones(3, 4, device=DEV), dtype=torch.float64)
    torch.testing.assert_close(ones, _naive_scores(x, r, a, 4, (1.1, 1.0), 0.0), atol=1e-12, rtol=1e-12)
    got, errors = R.patch_scores_reference(x, r, a, patch_size=4, top_weights=(2.0, 1.0), rest_weight=0.5,
                                           patch_weights=pw, dtype=torch.float64)
    for i in range(3):
        ranked = sorted((errors[i] * pw.double()).flatten().tolist(), reverse=True)
        expected = 2.0 * ranked[0] + 1.0 * ranked[1] + 0.5 * sum(ranked[2:])
        assert abs(float(got[i]) - expected) < 1e-12


@pytest.mark.parametrize("bad,exc,match", [
    (torch.ones(3, 3), ValueError, r"patch_weights of shape \(4, 4\) for patch_size 4, got \(3, 3\)"),
    (torch.ones(4, 4, dtype=torch.float64), TypeError, "patch_weights as a float32 tensor"),
    (torch.full((4, 4), -1.0), ValueError, "finite, non-negative patch_weights"),
    (torch.full((4, 4), float("nan")), ValueError, "finite, non-negative patch_weights"),
])
def test_bad_patch_weights_are_named(bad, exc, match):
    x, r, a = _inputs(2, 3, 16, 16, 4, 4, torch.uint8, torch.float32, False)
    with pytest.raises(exc, match=match):
        ops.patch_scores(x, r, a, patch_size=4, patch_weights=bad.to(DEV))


# (B, H, W, P, T, map dtype, patch weights): the map kernel (another error measure's per-pixel map)
MAP_CASES = [
    (3, 32, 32, 8, 2, torch.float32, False),  # top-T by max reductions
    (2, 24, 40, 8, 15, torch.float32, True),  # odd G = 15, T = G (sort path), weights
    (2, 12, 18, 6, 0, torch.float16, False),  # P = 6, T = 0, half-precision map
    (1, 8, 1024, 8, 3, torch.float32, True),  # Gw = 128 > BLOCK_GW: several column tiles
]


@pytest.mark.parametrize("b,h,w,p,t,dtype,weighted", MAP_CASES)
def test_map_kernel_matches_float64_reference(b, h, w, p, t, dtype, weighted):
    from patchgan_fast.kernels import map_scores_triton

    maps = torch.rand((b, h, w), generator=torch.Generator().manual_seed(b + h + t)).to(dtype).to(DEV)
    pw = _position_weights(h // p, w // p) if weighted else None
    kw = dict(patch_size=p, top_weights=_weights(t, seed=t), rest_weight=0.4, patch_weights=pw)
    scores, errors = map_scores_triton(maps, **kw)
    ref_s, ref_e = R.map_scores_reference(maps, dtype=torch.float64, **kw)
    assert scores.dtype == errors.dtype == torch.float32 and errors.shape == (b, h // p, w // p)
    _assert_close(errors, ref_e, torch.float32)
    _assert_close(scores, ref_s, torch.float32)


def test_public_map_scores_dispatches_and_checks(monkeypatch):
    maps = torch.rand((2, 16, 16), generator=torch.Generator().manual_seed(0)).to(DEV)
    monkeypatch.setenv("PATCHGAN_FAST_BACKEND", "native")
    native = ops.map_scores(maps, patch_size=4)
    monkeypatch.setenv("PATCHGAN_FAST_BACKEND", "reference")
    reference = ops.map_scores(maps, patch_size=4)
    for got, ref in zip(native, reference):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=2e-5)
    with pytest.raises(ValueError, match=r"expected error maps as a floating tensor \[B, H, W\], got torch.int64"):
        ops.map_scores(torch.zeros(2, 16, 16, dtype=torch.int64), patch_size=4)
    with pytest.raises(ValueError, match=r"image size 16x16 is not divisible by patch_size 5"):
        ops.map_scores(maps, patch_size=5)
    with pytest.raises(ValueError, match=r"17 top weights given but 16x16 images have only 16 patches of 4x4"):
        ops.map_scores(maps, patch_size=4, top_weights=(1.0,) * 17)


def test_infilled_gathers_each_patch_from_the_copy_that_hid_it():
    """The patch-level gather equals a per-pixel transcription."""
    x, r, a = _inputs(2, 3, 12, 16, 4, 4, torch.uint8, torch.float32, True)
    got = R.infilled_reference(r, a, patch_size=4)
    want = torch.empty_like(r[0])
    for i in range(2):
        for gy in range(3):
            for gx in range(4):
                k = int(a[i, gy, gx])
                want[i, :, gy * 4:gy * 4 + 4, gx * 4:gx * 4 + 4] = r[k, i, :, gy * 4:gy * 4 + 4, gx * 4:gx * 4 + 4]
    assert torch.equal(got, want)


@pytest.mark.parametrize("k,norm,t,weighted", [(4, True, 2, False), (1, False, 0, True), (4, True, 12, True)])
def test_the_patch_score_op_passes_opcheck(k, norm, t, weighted):
    """torch.ops.patchgan_fast.patch_scores: schema, fake, CPU kernel (the reference) and, on a GPU, the Triton
    kernel through wrap_triton, as torch.library.opcheck checks them."""
    from patchgan_fast.ops import _backend
    from patchgan_fast.kernels import device_constants

    _backend.triton_kernels()  # registers the op
    x, r, a = _inputs(2, 3, 16, 16, 4, k, torch.uint8, torch.bfloat16, False)
    mean, std = ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)) if norm else (None, None)
    weights, mean_t, istd_t = device_constants(_weights(t), mean, std, x.device)
    pw = _position_weights(4, 4) if weighted else None
    args = (x, r if k > 1 else r[0], a, weights, mean_t, istd_t, pw, 4, t, 0.25)
    torch.library.opcheck(torch.ops.patchgan_fast.patch_scores.default, args)
    scores, errors = torch.ops.patchgan_fast.patch_scores(*args)
    ref_s, ref_e = R.patch_scores_reference(x, r, a, patch_size=4, top_weights=_weights(t), rest_weight=0.25,
                                            mean=mean, std=std, patch_weights=pw, dtype=torch.float64)
    _assert_close(errors, ref_e, torch.bfloat16)
    _assert_close(scores, ref_s, torch.bfloat16)


# (B, C, H, W, P, K, recon dtype, channels_last): the tile shapes the GPU autotuner chooses among
TUNING_CASES = [
    (3, 3, 64, 64, 16, 4, torch.bfloat16, True),  # 3 channels in each tile (contiguous channels_last runs)
    (2, 1, 64, 128, 8, 4, torch.float16, False),  # small patches, 16 columns of them
    (2, 3, 96, 96, 32, 4, torch.float32, False),  # one channel per tile, P = 32
    (2, 2, 40, 40, 5, 9, torch.float32, True),  # P = 5: padded BLOCK_J, 2 channels per tile
]


@pytest.mark.parametrize("b,c,h,w,p,k,r_dtype,cl", TUNING_CASES)
def test_every_tuning_config_matches_the_reference(b, c, h, w, p, k, r_dtype, cl):
    from patchgan_fast.kernels import patch_score

    x, r, a = _inputs(b, c, h, w, p, k, torch.uint8, r_dtype, cl)
    norm = dict(mean=tuple(0.3 + 0.1 * i for i in range(c)), std=tuple(0.2 + 0.1 * i for i in range(c)))
    kw = dict(patch_size=p, top_weights=_weights(3), rest_weight=0.25)
    ref_s, ref_e = R.patch_scores_reference(x, r, a, dtype=torch.float64, **kw, **norm)
    tile_c = patch_score.tile_channels(r)
    assert tile_c == (c if cl else 1)
    configs = patch_score.tuning_configs(p, w // p, tile_c)
    assert 2 <= len(configs) <= 6
    for config in configs:
        scores, errors = patch_scores_triton(x, r, a, config=config, **kw, **norm)
        _assert_close(errors, ref_e, r_dtype)
        _assert_close(scores, ref_s, r_dtype)


def test_the_autotuner_always_keeps_its_candidates():
    from patchgan_fast.kernels import patch_score

    every = {(c.kwargs["BLOCK_Y"], c.kwargs["BLOCK_GW"], c.num_warps) for c in patch_score._all_configs()}
    for p in (1, 2, 3, 4, 5, 8, 16, 24, 32, 64, 128):
        for gw in (1, 2, 3, 7, 16, 64, 256, 1024):
            for tile_c in (1, 2, 3, 4):
                kept = patch_score._prune(patch_score._all_configs(), {"P": p, "Gw": gw}, TILE_C=tile_c)
                wanted = patch_score.tuning_configs(p, gw, tile_c)
                assert len(kept) == len(wanted) >= 2, (p, gw, tile_c)
                assert {(c.kwargs["BLOCK_Y"], c.kwargs["BLOCK_GW"], c.num_warps) for c in wanted} <= every
                for c in wanted:
                    block_j = 1 << (p * tile_c - 1).bit_length()
                    assert c.kwargs["BLOCK_Y"] * c.kwargs["BLOCK_GW"] * block_j <= 8192
