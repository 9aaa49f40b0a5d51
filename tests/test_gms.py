"""The structural patch error (ScoreConfig.error = 'msgms'): the MSGMS map against a direct
transcription of its formula, its invariances, and its use in scoring."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import random_images
from torch import nn

from patchgan_fast import ScoreConfig, TrainConfig, error_maps, pixel_errors, score_batch
from patchgan_fast.scoring.gms import GMS_CONSTANT, gms_errors


def _naive_gms_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - GMS at full resolution, written out with loops (Prewitt filters, replicated borders)."""
    def magnitude(x):
        p = np.pad(x, 1, mode="edge")
        h, w = x.shape
        g = np.zeros_like(x)
        for i in range(h):
            for j in range(w):
                win = p[i:i + 3, j:j + 3]
                gx = (win[:, 0].sum() - win[:, 2].sum()) / 3
                gy = (win[0, :].sum() - win[2, :].sum()) / 3
                g[i, j] = np.hypot(gx, gy)
        return g

    ga, gb = magnitude(a), magnitude(b)
    return 1 - (2 * ga * gb + GMS_CONSTANT) / (ga**2 + gb**2 + GMS_CONSTANT)


def test_single_scale_map_matches_the_formula_written_out():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 12, 10, generator=g), torch.rand(2, 1, 12, 10, generator=g)
    got = gms_errors(a, b, scales=1)
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), _naive_gms_error(a[i, 0].double().numpy(), b[i, 0].double().numpy()),
                                   rtol=1e-4, atol=1e-5)


def test_map_is_zero_for_the_same_image_and_ignores_brightness_offsets():
    images = random_images((3, 3, 32, 32), torch.uint8)
    x = images.float() / 255
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    normalized = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert float(gms_errors(images, normalized, mean=mean, std=std).abs().max()) < 1e-5
    # a constant offset changes no gradient: a brightness shift is not a structural error
    assert float(gms_errors(x, x + 0.2).abs().max()) < 1e-5
    # the squared error does see the offset
    assert float(pixel_errors(x, (x + 0.2)[None], None, patch_size=8).min()) > 0.03


def test_a_missing_edge_is_found_where_it_is():
    a = torch.zeros(1, 1, 32, 32)
    a[..., 8:24, 8:24] = 1.0  # a bright square
    b = torch.full_like(a, 0.25)  # the reconstruction lost it (flat)
    err = gms_errors(a, b)[0]
    assert float(err[8, 16]) > 0.5 and float(err[16, 8]) > 0.5  # on its edges
    assert float(err[0, 0]) < 0.25 and float(err[16, 16]) < 0.25  # far from them
    with pytest.raises(ValueError, match="scales >= 1"):
        gms_errors(a, b, scales=0)


class Blur(nn.Module):
    def forward(self, x):
        return nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def test_msgms_patch_errors_are_patch_means_of_the_pixel_map_and_rank_with_the_weights():
    images = random_images((4, 1, 32, 32), torch.uint8, seed=2)
    cfg = ScoreConfig(patch_size=8, num_copies=4, error="msgms", mean=(0.5,), std=(0.25,))
    res = score_batch(Blur(), images, cfg)
    pixels = pixel_errors(images, res.reconstructions, res.assignment, patch_size=8, mean=cfg.mean, std=cfg.std,
                          error="msgms")
    torch.testing.assert_close(res.patch_errors, pixels.unflatten(1, (4, 8)).unflatten(3, (4, 8)).mean((2, 4)))
    top2 = res.patch_errors.flatten(1).topk(2).values
    torch.testing.assert_close(res.scores, 1.1 * top2[:, 0] + top2[:, 1])
    w = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    weighted = score_batch(Blur(), images, dataclasses.replace(cfg, patch_weights=w.tolist())).scores
    top2 = (res.patch_errors * w).flatten(1).topk(2).values
    torch.testing.assert_close(weighted, 1.1 * top2[:, 0] + top2[:, 1])
    assert not torch.allclose(res.patch_errors, score_batch(Blur(), images, dataclasses.replace(cfg, error="mse")).patch_errors)
    maps = error_maps(Blur(), images, cfg, smoothing=1)
    torch.testing.assert_close(maps, pixels)


def test_combined_error_is_the_scaled_sum_of_both_measures():
    images = random_images((4, 1, 32, 32), torch.uint8, seed=3)
    cfg = ScoreConfig(patch_size=8, num_copies=4, error="mse+msgms", error_scales=(0.2, 0.05), mean=(0.5,), std=(0.25,))
    res = score_batch(Blur(), images, cfg)
    parts = {e: score_batch(Blur(), images, dataclasses.replace(cfg, error=e)).patch_errors for e in ("mse", "msgms")}
    torch.testing.assert_close(res.patch_errors, parts["mse"] / 0.2 + parts["msgms"] / 0.05)
    top2 = res.patch_errors.flatten(1).topk(2).values
    torch.testing.assert_close(res.scores, 1.1 * top2[:, 0] + top2[:, 1])
    pixels = pixel_errors(images, res.reconstructions, res.assignment, patch_size=8, mean=cfg.mean, std=cfg.std,
                          error="mse+msgms", error_scales=(0.2, 0.05))
    torch.testing.assert_close(error_maps(Blur(), images, cfg, smoothing=1), pixels)
    unscaled = score_batch(Blur(), images, dataclasses.replace(cfg, error_scales=None)).patch_errors
    torch.testing.assert_close(unscaled, parts["mse"] + parts["msgms"])
    for bad in ((1.0,), (0.0, 1.0), (1.0, float("nan"))):
        with pytest.raises(ValueError, match="error_scales must be two positive finite floats"):
            ScoreConfig(error="mse+msgms", error_scales=bad)


def test_unknown_errors_are_named():
    with pytest.raises(ValueError, match="ScoreConfig.error must be one of mse, msgms, mse\\+msgms, got 'ssim'"):
        ScoreConfig(error="ssim")
    with pytest.raises(ValueError, match="unknown error 'l1'; expected one of mse, msgms, mse\\+msgms"):
        TrainConfig(error="l1")
    with pytest.raises(ValueError, match="unknown error"):
        pixel_errors(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 1, 8, 8), None, patch_size=8, error="l1")
