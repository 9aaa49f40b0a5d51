"""Bad input gets a clear error that names what was received and what was expected."""

import subprocess
import sys

import pytest
import torch
from conftest import cpu_and_cuda
from helpers import random_images
from torch import nn

from patchgan_fast import ScoreConfig, ops, score_batch


def _recon(k=4, b=2, c=3, h=16, w=16):
    return torch.rand(k, b, c, h, w)


def _assign(b=2, g=4, k=4):
    return ops.patch_assignment(torch.arange(b), (g, g), layout="phases", num_copies=k)


X = random_images((2, 3, 16, 16), torch.uint8)


@pytest.mark.parametrize(
    "call,exc,message",
    [
        # wrong rank
        (lambda: ops.patch_scores(X[0], _recon(), _assign(), patch_size=4), ValueError,
         r"expected images of shape \[B, C, H, W\], got 3-D \(3, 16, 16\); for a single image use images\[None\]"),
        (lambda: ops.patch_scores(X, _recon()[0, 0], _assign(), patch_size=4), ValueError,
         r"expected reconstructions of shape \[K, B, C, H, W\] or \[B, C, H, W\], got 3-D \(3, 16, 16\)"),
        # channel mismatch
        (lambda: ops.patch_scores(X, _recon(c=1), _assign(), patch_size=4), ValueError,
         r"reconstructions \(4, 2, 1, 16, 16\) do not match images \(2, 3, 16, 16\).*channel count"),
        # sizes not divisible by the patch size
        (lambda: ops.patch_scores(X, _recon(), _assign(), patch_size=5), ValueError,
         r"image size 16x16 is not divisible by patch_size 5"),
        (lambda: ops.mask_images(X, patch_size=6), ValueError, r"image size 16x16 is not divisible by patch_size 6"),
        # empty batch
        (lambda: ops.patch_scores(X[:0], _recon(b=0), None, patch_size=4), ValueError,
         r"expected a non-empty batch of images, got shape \(0, 3, 16, 16\)"),
        (lambda: ops.build_masks(torch.zeros(0, dtype=torch.int64), (16, 16)), ValueError,
         r"expected a non-empty batch, got 0 keys"),
        # NaN / inf
        (lambda: ops.patch_scores(torch.full((2, 3, 16, 16), float("nan")), _recon(), _assign(), patch_size=4),
         ValueError, r"images contain NaN or inf"),
        (lambda: ops.patch_scores(X, _recon().index_fill(1, torch.tensor([1]), float("inf")), _assign(), patch_size=4),
         ValueError, r"non-finite scores for images at batch positions \[1\]"),
        (lambda: ops.mask_images(torch.full((1, 1, 8, 8), 2.0), patch_size=4), ValueError,
         r"expected float images in \[0, 1\], got values in \[2, 2\]; pass uint8 or rescale"),
        # devices and dtypes
        (lambda: ops.patch_scores(X, _recon().to("meta"), _assign(), patch_size=4), ValueError,
         r"images are on cpu but reconstructions on meta"),
        (lambda: ops.patch_scores(X, _recon().to(torch.int32), _assign(), patch_size=4), TypeError,
         r"expected floating reconstructions \(fp32/bf16/fp16\), got torch.int32"),
        (lambda: ops.patch_scores(X.to(torch.int16), _recon(), _assign(), patch_size=4), TypeError,
         r"expected images of dtype uint8 or floating, got torch.int16"),
        (lambda: ops.mask_images(X, patch_size=4, dtype=torch.float64), TypeError,
         r"expected dtype float32, bfloat16 or float16, got torch.float64"),
        (lambda: ops.build_masks(torch.zeros(2, dtype=torch.int32), (16, 16)), TypeError,
         r"expected keys as an int64 tensor of shape \[B\], got torch.int32"),
        (lambda: ops.mask_images(X, torch.zeros(3, dtype=torch.int64)), ValueError,
         r"expected one key per image: 2 images, 3 keys"),
        # K inconsistent with the reconstructions
        (lambda: ops.patch_scores(X, _recon(k=2), _assign(k=4), patch_size=4), ValueError,
         r"assignment refers to copy 3 but there are only K = 2 reconstructions"),
        (lambda: ops.patch_scores(X, _recon(k=4), None, patch_size=4), ValueError,
         r"4 reconstructions per image need the patch assignment"),
        (lambda: ops.build_masks(torch.arange(2), (16, 16), layout="phases", num_copies=3, patch_size=4), ValueError,
         r"layout 'phases' needs a square num_copies \(4, 9, 16, ...\), got 3"),
        # T larger than the patch count
        (lambda: ops.patch_scores(X, _recon(), _assign(g=2), patch_size=8, top_weights=(1.0,) * 5), ValueError,
         r"5 top weights given but 16x16 images have only 4 patches of 8x8"),
        # other arguments
        (lambda: ops.build_masks(torch.arange(2), (16, 16), layout="stripes"), ValueError,
         r"unknown mask layout 'stripes'; expected one of none, phases, random, boxes"),
        (lambda: ops.build_masks(torch.arange(2), (16, 16), layout="boxes", num_copies=1, box_size=(4, 20)), ValueError,
         r"expected box_size \(min, max\) with 1 <= min <= max <= min\(H, W\) = 16, got \(4, 20\)"),
        (lambda: ops.mask_images(X, patch_size=4, mean=(0.5,), std=(0.2,)), ValueError,
         r"expected mean and std with one value per channel \(3\), got 1 and 1"),
        (lambda: ops.build_masks(torch.arange(2), (16, 16), seed=-1), ValueError,
         r"expected seed an int in \[0, 2\*\*32\), got -1"),
    ],
)
def test_python_layer_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# The compiled ops' own argument errors (TORCH_CHECK) must reach Python as RuntimeError. On one H100 build every
# such throw killed the process instead, so each runs in a subprocess: a crash fails one test, not the test run.
CPP_BUILD_MASKS_ERRORS = [
    ("torch.arange(2).view(1, 2), 16, 16, 1, 4, 4, 0, 1, 4, 2, 8", r"expected keys of shape \[B\], got 2-D"),
    ("torch.arange(2), 16, 18, 1, 4, 4, 0, 1, 4, 2, 8", r"expected image size divisible by patch_size 4, got 16x18"),
    ("torch.arange(2), 16, 16, 1, 4, 3, 0, 1, 4, 2, 8", r"layout 'phases' needs a square num_copies"),
    ("torch.arange(2), 16, 16, 2, 4, 17, 0, 1, 4, 2, 8", r"2 <= num_copies <= patches per image \(16\), got 17"),
    ("torch.arange(2), 16, 16, 3, 4, 1, 0, 1, 4, 2, 32", r"expected 1 <= min_size <= max_size <= min\(H, W\) = 16"),
    ("torch.arange(2), 16, 16, 7, 4, 1, 0, 1, 4, 2, 8", r"expected layout code 0..3"),
    ("torch.arange(2), 16, 16, 0, 4, 2, 0, 1, 4, 2, 8", r"layout 'none' hides nothing and needs num_copies=1"),
]
_X = "torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)"
CPP_MASK_IMAGES_ERRORS = [
    (f"{_X}, torch.arange(3), 1, 4, 4, 0, 1, 4, 2, 8, [], [], 0.0, torch.float32, False",
     r"expected one key per image: 2 images, 3 keys"),
    (f"{_X}.int(), torch.arange(2), 1, 4, 4, 0, 1, 4, 2, 8, [], [], 0.0, torch.float32, False",
     r"expected uint8 or floating images, got Int"),
    (f"{_X}, torch.arange(2), 1, 4, 4, 0, 1, 4, 2, 8, [0.1, 0.2], [1.0, 1.0], 0.0, torch.float32, False",
     r"expected mean/std with one value per channel \(3\), got 2"),
    (f"{_X}[0], torch.arange(2), 1, 4, 4, 0, 1, 4, 2, 8, [], [], 0.0, torch.float32, False",
     r"expected images of shape \[B, C, H, W\], got 3-D"),
    (f"{_X}, torch.arange(2), 1, 4, 4, 0, 1, 4, 2, 8, [], [], 0.0, torch.float32, False, "
     "torch.zeros(2, 3, 4, dtype=torch.uint8)", r"expected the assignment as uint8 \[2, 4, 4\], got Byte \[2, 3, 4\]"),
    (f"{_X}, torch.arange(2), 3, 4, 1, 0, 1, 4, 2, 8, [], [], 0.0, torch.float32, False, "
     "torch.zeros(2, 4, 4, dtype=torch.uint8)", r"an assignment goes with layout 'phases' or 'random'"),
]


def _raises_in_a_subprocess(op: str, args: str, message: str, device: str = "cpu") -> None:
    code = (f"import re, torch, patchgan_fast\n"
            f"torch.set_default_device({device!r})\n"
            f"try:\n    torch.ops.patchgan_fast.{op}({args})\n"
            f"except RuntimeError as e:\n    print('RAISED', re.search({message!r}, str(e)) is not None, str(e).splitlines()[0])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the process died (exit {done.returncode}) instead of raising: {done.stderr[-2000:]}"
    assert done.stdout.startswith("RAISED True"), f"expected a RuntimeError matching {message!r}, got: {done.stdout}"


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("args,message", CPP_BUILD_MASKS_ERRORS)
def test_cpp_layer_errors(args, message, device):
    _raises_in_a_subprocess("build_masks", args, message, device)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("args,message", CPP_MASK_IMAGES_ERRORS)
def test_cpp_mask_images_errors(args, message, device):
    _raises_in_a_subprocess("mask_images", args, message, device)


class WrongShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.conv(x)


def test_score_batch_errors():
    with pytest.raises(ValueError, match=r"the model must map \[N, C, H, W\] -> \[N, C, H, W\]; given \(8, 3, 16, 16\) "
                                         r"\(K=4 copies of 2 images\) it returned \(8, 1, 16, 16\)"):
        score_batch(WrongShape(), X, ScoreConfig(patch_size=4))
    with pytest.raises(ValueError, match=r"images are on meta but the model's parameters on cpu"):
        score_batch(WrongShape(), X.to("meta"), ScoreConfig(patch_size=4))
    with pytest.raises(ValueError, match=r"3 top weights given but 16x16 images have only 1 patches of 16x16"):
        score_batch(WrongShape(), X, ScoreConfig(patch_size=16, layout="none", num_copies=1, top_weights=(1, 1, 1)))
    with pytest.raises(ValueError, match=r"ScoreConfig.layout must be 'none', 'phases' or 'random', got 'boxes'"):
        ScoreConfig(layout="boxes")
    with pytest.raises(TypeError, match=r"expected config as a ScoreConfig, got dict"):
        score_batch(WrongShape(), X, {"patch_size": 4})


def test_score_batch_checks_the_patch_grid_for_plain_reconstruction():
    with pytest.raises(ValueError, match=r"image size 16x16 is not divisible by patch_size 5"):
        score_batch(nn.Identity(), X, ScoreConfig(patch_size=5, layout="none", num_copies=1))
