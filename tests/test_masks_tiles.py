"""The CUDA masks kernels' per-thread code (csrc/masks_tiles.h) run on the CPU: tests/cpp/masks_tiles_host.cpp
calls it for every thread index of every launch, planned as csrc/cuda/masks_cuda.cu plans them (vector width,
dense or strided input, batches split into launches), and the result must equal the CPU kernel's bit for
bit. Without a GPU this is how the index arithmetic (32-bit multiply-high divisions, NCHW/NHWC vectors, patch
owners shared by a vector) is checked; on a GPU tests/test_masks.py compares the CUDA op itself."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from patchgan_fast import ops
from patchgan_fast.ops import LAYOUTS

ROOT = Path(__file__).resolve().parents[1]
BOXES = dict(box_count=(1, 3), box_size=(2, 4))  # what the harness uses for layout 'boxes'


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    exe = tmp_path_factory.mktemp("harness") / "masks_tiles_host"
    run = subprocess.run(["g++", "-O1", "-std=c++17", "-ffp-contract=off", "-Wall", "-Werror", "-o", str(exe),
                          str(ROOT / "tests" / "cpp" / "masks_tiles_host.cpp")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    return exe


def _run(exe, *args) -> str:
    run = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr + run.stdout
    return run.stdout


def test_fast_division_equals_integer_division(harness):
    assert "checked" in _run(harness, "divide")


def _keys(n):
    return torch.tensor([0, -1, 2**40 + 7, 12345, -(2**62), 99, 3][:n] + list(range(1000, 1000 + max(0, n - 7))),
                        dtype=torch.int64)


IMAGE_CASES = [
    # (B, C, H, W, P, K, layout, input order, output order, input dtype, norm, elements per launch)
    (2, 3, 16, 16, 8, 4, "phases", "nchw", "nchw", "u8", True, None),  # vectors of 4, one owner per vector
    (3, 3, 8, 12, 4, 3, "random", "nhwc", "nhwc", "u8", True, None),  # NHWC vectors span pixels of two patches
    (2, 1, 10, 10, 5, 4, "phases", "strided", "nchw", "f32", False, None),  # W % 4 != 0: one element per thread
    (3, 2, 8, 8, 4, 4, "phases", "strided", "nhwc", "u8", False, None),  # strided input, NHWC output
    (2, 3, 8, 8, 4, 2, "boxes", "nchw", "nchw", "u8", True, None),
    (2, 3, 8, 8, 4, 2, "boxes", "nhwc", "nhwc", "f32", False, None),
    (2, 1, 8, 8, 4, 1, "none", "nchw", "nchw", "f32", False, None),
    (5, 3, 8, 8, 2, 4, "phases", "nchw", "nhwc", "u8", True, 2 * 3 * 8 * 8 + 1),  # 3 launches of <= 2 images
    (7, 5, 4, 8, 4, 2, "random", "nhwc", "nchw", "u8", True, 5 * 4 * 8),  # 7 launches; 5 channels: norm table
]


@pytest.mark.parametrize("vector", [1, 0])
@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: f"{c[6]}-{c[7]}-{c[8]}-{c[9]}-{c[0]}x{c[1]}x{c[2]}x{c[3]}")
def test_cuda_mask_images_threads_equal_the_cpu_kernel(harness, tmp_path, case, vector):
    b, c, h, w, p, k, layout, order, out_order, kind, norm, limit = case
    gen = torch.Generator().manual_seed(b * 100 + c)
    if kind == "u8":
        images = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=gen)
    else:
        images = torch.rand((b, c, h, w), generator=gen)
    keys = _keys(b)
    mean = [0.1 * (i + 1) for i in range(c)] if norm else None
    std = [0.2 + 0.05 * i for i in range(c)] if norm else None
    (tmp_path / "in").write_bytes(images.numpy().tobytes())
    (tmp_path / "keys").write_bytes(keys.numpy().tobytes())
    spec = "none" if not norm else ",".join(map(repr, mean)) + ":" + ",".join(map(repr, std))
    out = _run(harness, "images", b, c, h, w, p, k, LAYOUTS[layout], 7, order, out_order, vector,
               limit or 2**31 - 1, int(kind == "u8"), spec, tmp_path / "keys", tmp_path / "in", tmp_path / "out")
    fmt = torch.channels_last if out_order == "nhwc" else torch.contiguous_format
    want = ops.mask_images(images, keys, layout=layout, patch_size=p, num_copies=k,
                           seed=7, mean=mean, std=std, fill=0.5, memory_format=fmt, **BOXES)
    raw = np.frombuffer((tmp_path / "out").read_bytes(), dtype=np.float32)
    if out_order == "nhwc":
        got = torch.from_numpy(raw.copy()).reshape(k, b, h, w, c).permute(0, 1, 4, 2, 3)
    else:
        got = torch.from_numpy(raw.copy()).reshape(k, b, c, h, w)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    expect_vector = vector and (w * (c if out_order == "nhwc" else 1)) % 4 == 0
    assert f"vector={4 if expect_vector else 1} " in out
    assert f"dense={int(order == out_order or (c == 1 and order != 'strided'))}" in out
    if limit:
        per_launch = max(1, limit // (c * h * w))
        assert f"launches={-(-b // per_launch)}" in out


MASK_CASES = [
    # (B, H, W, P, K, layout, elements per launch)
    (3, 16, 32, 8, 4, "phases", None),  # rows of 32: vectors of 16
    (3, 16, 32, 16, 2, "random", None),
    (2, 12, 12, 4, 4, "phases", None),  # rows of 12: one element per thread
    (2, 16, 16, 4, 3, "random", 16 * 16 * 2),  # 3 launches of 2 masks
    (3, 16, 16, 16, 3, "boxes", None),
    (2, 8, 16, 8, 1, "none", 8 * 16),
]


@pytest.mark.parametrize("vector", [1, 0])
@pytest.mark.parametrize("case", MASK_CASES, ids=lambda c: f"{c[5]}-{c[0]}x{c[1]}x{c[2]}-P{c[3]}-K{c[4]}")
def test_cuda_build_masks_threads_equal_the_cpu_kernel(harness, tmp_path, case, vector):
    b, h, w, p, k, layout, limit = case
    keys = _keys(b)
    (tmp_path / "keys").write_bytes(keys.numpy().tobytes())
    box_count, box_size = (1, 4), (2, 9)
    out = _run(harness, "masks", b, h, w, p, k, LAYOUTS[layout], 11, *box_count, *box_size, vector,
               limit or 2**31 - 1, tmp_path / "keys", tmp_path / "out")
    want = ops.build_masks(keys, (h, w), layout=layout, patch_size=p, num_copies=k, seed=11, box_count=box_count,
                           box_size=box_size)
    got = torch.from_numpy(np.frombuffer((tmp_path / "out").read_bytes(), dtype=np.uint8).copy()).reshape(k, b, h, w)
    assert torch.equal(got.bool(), want)
    assert f"vector={16 if vector and w % 16 == 0 else 1} " in out
    if limit:
        assert f"launches={-(-(k * b) // max(1, limit // (h * w)))}" in out
