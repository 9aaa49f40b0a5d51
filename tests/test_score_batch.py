"""score_batch end to end with small reconstructor modules."""

import dataclasses

import pytest
import torch
from conftest import cpu_and_cuda
from helpers import random_images
from sklearn.metrics import roc_auc_score
from torch import nn

from patchgan_fast import RANKING_PRESETS, ScoreConfig, error_maps, pixel_errors, score_batch
from patchgan_fast.ops import reference as R


class TinyReconstructor(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, channels, 3, padding=1))
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.net(self.norm(x))


class Template(nn.Module):
    """A 'reconstructor' that has learned one normal image and returns it whatever it is shown."""

    def __init__(self, template):
        super().__init__()
        self.register_buffer("template", template)

    def forward(self, x):
        return self.template.expand_as(x).to(x.dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("layout,k", [("phases", 4), ("random", 4), ("none", 1)])
def test_score_batch_matches_the_reference_pipeline(device, layout, k):
    torch.manual_seed(0)
    model = TinyReconstructor(3).to(device)
    images = random_images((5, 3, 32, 32), torch.uint8, device=device)
    keys = torch.arange(5, device=device)
    cfg = ScoreConfig(patch_size=8, layout=layout, num_copies=k, seed=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    res = score_batch(model, images, cfg, keys=keys)
    assert res.scores.shape == (5,) and res.patch_errors.shape == (5, 4, 4)
    assert res.masked.shape == res.reconstructions.shape == (k, 5, 3, 32, 32)
    assert (res.assignment is None) == (k == 1)
    # the same thing written out with the references
    masked = R.mask_images_reference(images, keys, layout=layout, patch_size=8, num_copies=k, seed=2, box_count=(1, 1),
                                     box_size=(1, 1), mean=cfg.mean, std=cfg.std, fill=0.0, dtype=torch.float32,
                                     memory_format=torch.contiguous_format)
    assert torch.equal(res.masked, masked)
    with torch.no_grad():
        model.eval()
        recon = model(masked.flatten(0, 1)).view(k, 5, 3, 32, 32)
    ref_s, ref_e = R.patch_scores_reference(images, recon, res.assignment, patch_size=8, top_weights=(1.1, 1.0),
                                            rest_weight=0.0, mean=cfg.mean, std=cfg.std, dtype=torch.float64)
    torch.testing.assert_close(res.scores.double(), ref_s, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(res.patch_errors.double(), ref_e, atol=1e-6, rtol=1e-4)


def test_uint8_and_float_images_score_alike_and_model_mode_is_restored():
    model = TinyReconstructor(1)
    model.train()
    images = random_images((4, 1, 16, 16), torch.uint8)
    cfg = ScoreConfig(patch_size=4, num_copies=4)
    a = score_batch(model, images, cfg)
    b = score_batch(model, images.float() / 255, cfg)
    assert model.training
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-5)


def test_scores_do_not_depend_on_batch_position():
    model = TinyReconstructor(3)
    images = random_images((6, 3, 16, 16), torch.uint8)
    keys = torch.tensor([10, 11, 12, 13, 14, 15])
    cfg = ScoreConfig(patch_size=4, layout="random", num_copies=3)
    full = score_batch(model, images, cfg, keys=keys).scores
    order = torch.tensor([5, 2, 0])
    part = score_batch(model, images[order], cfg, keys=keys[order]).scores
    torch.testing.assert_close(part, full[order], atol=1e-6, rtol=1e-5)


def test_large_batches_run_in_chunks_and_score_as_one_forward():
    calls = []

    class Counting(TinyReconstructor):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    model = Counting(1)
    images = random_images((40, 1, 16, 16), torch.uint8)
    cfg = ScoreConfig(patch_size=4, num_copies=4)
    res = score_batch(model, images, cfg)
    assert calls == [64, 64, 32]  # 160 copies in chunks of default_forward_batch (64 on a CPU)
    with torch.no_grad():
        whole = model.eval()(res.masked.flatten(0, 1)).view_as(res.reconstructions)
    torch.testing.assert_close(res.reconstructions, whole, atol=1e-6, rtol=1e-5)

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(ValueError, match="returned tuple"):
        score_batch(Pair(), images, cfg)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_bf16_channels_last_model_inputs(device):
    if device == "cpu":
        pytest.skip("bf16 convolutions are a GPU configuration")
    model = TinyReconstructor(3).to(device).to(torch.bfloat16).to(memory_format=torch.channels_last)
    images = random_images((8, 3, 32, 32), torch.uint8, device=device)
    res = score_batch(model, images, ScoreConfig(patch_size=8, channels_last=True))
    assert res.masked.dtype == torch.bfloat16 and res.masked.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    ref_s, _ = R.patch_scores_reference(images, res.reconstructions, res.assignment, patch_size=8,
                                        top_weights=(1.1, 1.0), rest_weight=0.0, dtype=torch.float64)
    torch.testing.assert_close(res.scores.double(), ref_s, atol=1e-5, rtol=1e-4)


def test_ranking_finds_a_small_lesion_that_the_mean_misses():
    """The point of eq. 5: a small abnormal region in a large normal image is not averaged away."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    template = (0.3 + 0.4 * yy * xx).view(1, 1, 64, 64)
    n = 40
    images = (template + 0.04 * torch.randn((2 * n, 1, 64, 64), generator=g)).clamp(0, 1)
    for i in range(n, 2 * n):  # abnormal half: one small bright lesion each
        y, x = torch.randint(0, 60, (2,), generator=g).tolist()
        images[i, :, y:y + 4, x:x + 4] = (images[i, :, y:y + 4, x:x + 4] + 0.1).clamp(0, 1)
    labels = [0] * n + [1] * n
    model = Template(template)
    auroc = {}
    for preset in ("paper", "none"):
        cfg = ScoreConfig(patch_size=8, layout="none", num_copies=1).with_ranking(preset)
        auroc[preset] = roc_auc_score(labels, score_batch(model, images, cfg).scores.numpy())
    assert auroc["paper"] > 0.95
    assert auroc["paper"] > auroc["none"] + 0.1


def test_ranking_presets():
    assert RANKING_PRESETS["paper"] == ((1.1, 1.0), 0.0)
    cfg = ScoreConfig().with_ranking("none")
    assert cfg.top_weights == () and cfg.rest_weight == 1.0
    with pytest.raises(ValueError, match="unknown ranking preset 'best'; expected one of paper, none"):
        ScoreConfig().with_ranking("best")


@pytest.mark.parametrize("layout,k", [("phases", 4), ("random", 4), ("none", 1)])
def test_pixel_errors_average_to_the_patch_errors(layout, k):
    torch.manual_seed(0)
    model = TinyReconstructor(3)
    images = random_images((3, 3, 32, 32), torch.uint8)
    cfg = ScoreConfig(patch_size=8, layout=layout, num_copies=k, mean=(0.5,) * 3, std=(0.25,) * 3)
    res = score_batch(model, images, cfg, keys=torch.arange(3))
    px = pixel_errors(images, res.reconstructions, res.assignment, patch_size=8, mean=cfg.mean, std=cfg.std)
    assert px.shape == (3, 32, 32) and px.dtype == torch.float32
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(px[:, None], 8)[:, 0], res.patch_errors, atol=1e-6, rtol=1e-5)
    # unsmoothed maps are these pixel errors; smoothing keeps the shape and averages neighbours
    torch.testing.assert_close(error_maps(model, images, cfg, keys=torch.arange(3), smoothing=1), px)
    smooth = error_maps(model, images, cfg, keys=torch.arange(3), smoothing=5, batch=2)
    assert smooth.shape == px.shape
    torch.testing.assert_close(smooth[:, 2:-2, 2:-2], torch.nn.functional.avg_pool2d(px[:, None], 5, 1)[:, 0])


def test_error_maps_localize_a_lesion_within_its_patch():
    """Finer than the patch grid: the peak of the map lies on the lesion, not just in its patch."""
    template = torch.full((1, 1, 32, 32), 0.4)
    images = template.repeat(2, 1, 1, 1)
    images[1, :, 9:12, 13:16] = 0.9
    maps = error_maps(Template(template), images, ScoreConfig(patch_size=8, layout="phases", num_copies=4), smoothing=3)
    assert maps[0].max() == 0
    y, x = divmod(int(maps[1].argmax()), 32)
    assert 9 <= y < 12 and 13 <= x < 16
    with pytest.raises(ValueError, match="smoothing a positive odd int, got 4"):
        error_maps(Template(template), images, ScoreConfig(patch_size=8), smoothing=4)
    with pytest.raises(ValueError, match="batch a positive int, got 0"):
        error_maps(Template(template), images, ScoreConfig(patch_size=8), batch=0)
    with pytest.raises(TypeError, match="torch.Tensor .* got ndarray"):
        error_maps(Template(template), images.numpy(), ScoreConfig(patch_size=8))


def test_patch_weights_must_fit_the_grid():
    model = TinyReconstructor(1)
    images = random_images((2, 1, 32, 32), torch.uint8)
    cfg = ScoreConfig(patch_size=8, patch_weights=[[1.0] * 3] * 3)
    assert cfg.patch_weights == ((1.0, 1.0, 1.0),) * 3
    with pytest.raises(ValueError, match="patch_weights are for a 3x3 patch grid but the images have 4x4 patches of 8x8"):
        score_batch(model, images, cfg)
    with pytest.raises(ValueError, match="Gh rows of Gw floats"):
        ScoreConfig(patch_weights=[[1.0, 2.0], [1.0]])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and non-negative"):
            ScoreConfig(patch_weights=[[1.0, bad]])
    # uniform weights of 1 change nothing
    ones = dataclasses.replace(cfg, patch_weights=[[1.0] * 4] * 4)
    torch.testing.assert_close(score_batch(model, images, ones).scores,
                               score_batch(model, images, dataclasses.replace(cfg, patch_weights=None)).scores)
