"""Patch scores: eager reference vs torch.compile'd reference vs the fused Triton kernel.

Effective bandwidth counts the bytes that must be read: the image once and one reconstruction's
worth of the K copies (each patch is read from one copy only).
"""

import pytest
import torch
from cases import CASES, IDS, nbytes
from conftest import measure

from patchgan_fast import ops
from patchgan_fast.ops import _backend
from patchgan_fast.ops.reference import patch_scores_reference

TOP, REST = (1.1, 1.0), 0.0
_compiled = torch.compile(patch_scores_reference, dynamic=False)


def _inputs(b, c, s, p, k, dtype, device):
    x = torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8, device=device)
    r = torch.rand((k, b, c, s, s), device=device, dtype=torch.float32).to(dtype)
    a = None
    if k > 1:
        a = ops.patch_assignment(torch.arange(b, device=device), (s // p, s // p), layout="phases", num_copies=k)
    return x, r, a


def _record_bandwidth(benchmark, record, copy_bandwidth, x, r, k, seconds, config):
    """Records seconds per call, effective GB/s and the fraction of a device copy of as many bytes."""
    moved = nbytes(x) + nbytes(r) // k
    copy = copy_bandwidth(moved // 2)  # a copy of half the bytes reads and writes as many as we read
    gbps = moved / seconds / 1e9
    benchmark.extra_info.update(gb_per_s=round(gbps, 1), fraction_of_copy=round(gbps * 1e9 / copy, 3))
    record("seconds_per_call", seconds, "s", config)
    record("effective_bandwidth", gbps, "GB/s", config)
    record("fraction_of_copy_bandwidth", gbps * 1e9 / copy, "ratio", config)


IMPLS = ["reference", "compiled", "triton"]
_seconds: dict = {}  # (case, impl) -> seconds per call, for the speedups of the kernel over both


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_patch_scores(benchmark, device, copy_bandwidth, record, case, impl):
    name, b, c, s, p, k, dtype = case
    if impl == "triton" and device.type != "cuda":
        pytest.skip("the Triton kernel's speed means something only on a GPU (the CPU runs its interpreter)")
    x, r, a = _inputs(b, c, s, p, k, dtype, device)
    kw = dict(patch_size=p, top_weights=TOP, rest_weight=REST)
    if impl == "triton":
        fn = lambda: _backend.triton_kernels().patch_scores_triton(x, r, a, **kw)  # noqa: E731
    else:
        f = _compiled if impl == "compiled" else patch_scores_reference
        fn = lambda: f(x, r, a, **kw)  # noqa: E731
    benchmark.group = f"patch_scores {name}"
    seconds = measure(benchmark, fn, device)
    if seconds is None:
        return
    _record_bandwidth(benchmark, record, copy_bandwidth, x, r, k, seconds, dict(case=name, impl=impl, T=len(TOP)))
    _seconds[name, impl] = seconds
    kernel = _seconds.get((name, "triton"))
    for other, metric in (("reference", "speedup_vs_eager"), ("compiled", "speedup_vs_compiled")):
        if kernel and (name, other) in _seconds and (name, metric) not in _seconds:
            _seconds[name, metric] = _seconds[name, other] / kernel
            record(metric, _seconds[name, metric], "x", dict(case=name, impl="triton", T=len(TOP)))


@pytest.mark.parametrize("case", [c for c in CASES if c[2] > 1], ids=[c[0] for c in CASES if c[2] > 1])
def test_patch_scores_channels_last(benchmark, device, copy_bandwidth, record, case):
    """The kernel on channels_last reconstructions (what the Scorer feeds it for 3-channel models): each
    tile holds a patch row's pixels and channels as one contiguous run."""
    name, b, c, s, p, k, dtype = case
    if device.type != "cuda":
        pytest.skip("the Triton kernel's speed means something only on a GPU (the CPU runs its interpreter)")
    x, r, a = _inputs(b, c, s, p, k, dtype, device)
    r = r.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(r.shape)
    kw = dict(patch_size=p, top_weights=TOP, rest_weight=REST)
    benchmark.group = f"patch_scores {name}"
    seconds = measure(benchmark, lambda: _backend.triton_kernels().patch_scores_triton(x, r, a, **kw), device)
    if seconds is None:
        return
    _record_bandwidth(benchmark, record, copy_bandwidth, x, r, k, seconds,
                      dict(case=name, impl="triton", T=len(TOP), memory_format="channels_last"))
