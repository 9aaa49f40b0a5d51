"""A Patch-GAN with a feature bank: eq. 5 plus the distance to the nearest normal training images' features,
each in units of the validation images' scores (TrainConfig.neighbours, PatchGAN.add_neighbours), on every
scoring path (score_batch, Scorer, the model file, the CLI)."""

import copy
import csv
import dataclasses
import importlib
import re

import pytest
import torch
from conftest import cpu_and_cuda
from helpers import SMALL, blobs
from PIL import Image
from sklearn.metrics import roc_auc_score

from patchgan_fast import PatchGAN, Scorer, ScoreConfig, TrainConfig, error_maps, score_batch
from patchgan_fast.ops.reference import normalize_reference
from patchgan_fast.cli import main
from patchgan_fast.evaluation.tables import summed_evenly
from patchgan_fast.scoring.neighbours import (EQ5_SHARES, Embedding, auroc, average_precision, bank_images,
                                             changed_pixels, choose_map_window, choose_outline, choose_weights,
                                             describe, filled, foreign_patches, leave_outline, map_windows,
                                             patch_distance_maps, patch_distances, patch_geometry, peak_window, peaks,
                                             ranks, unit_images)
from patchgan_fast.models.schedule import bank_choice, validation_split

patchgan_module = importlib.import_module("patchgan_fast.models.patchgan")
scorer_module = importlib.import_module("patchgan_fast.scoring.scorer")
neighbours_module = importlib.import_module("patchgan_fast.scoring.neighbours")

CONFIG = TrainConfig(**SMALL, steps=10, val_fraction=0.25, neighbours="bottleneck", neighbour_k=3, neighbour_bank=20)
TRAIN = blobs(48)
TEST = torch.cat([blobs(6, seed=1), blobs(6, seed=2, abnormal=True)])


@pytest.fixture(scope="module")
def model():
    return PatchGAN.fit(TRAIN, CONFIG)


def _features(model, images, space="bottleneck"):
    """The features of the unmasked images, average-pooled to at most 4 x 4, flattened, unit length (by hand)."""
    x = (images.float() / 255 - model.mean[0]) / model.std[0]
    f = model.reconstructor.encode(x) if space == "bottleneck" else model.discriminator.features(x)
    f = torch.nn.functional.adaptive_avg_pool2d(f, (min(f.shape[-2], 4), min(f.shape[-1], 4)))
    return torch.nn.functional.normalize(f.flatten(1), dim=1)


@torch.inference_mode()
def test_the_score_is_eq5_plus_the_distance_each_in_validation_units(model):
    val, train = validation_split(len(TRAIN), CONFIG)
    bank = TRAIN[train[bank_choice(len(train), CONFIG)]]
    assert len(bank) == 20 and torch.allclose(model.feature_bank, _features(model, bank), atol=1e-5)
    plain = dataclasses.replace(model.score_config, neighbour_scales=None)
    near = torch.cdist(_features(model, TEST), model.feature_bank).topk(3, dim=1, largest=False).values.mean(1)
    a, b, c, d = model.neighbour_scales
    u, v = model.neighbour_weights
    result = score_batch(model, TEST)
    torch.testing.assert_close(result.neighbour_distances, near, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.scores, u * (score_batch(model, TEST, plain).scores - a) / b + v * (near - c) / d,
                               atol=1e-4, rtol=1e-4)
    # the units: the validation images' eq. 5 scores and distances; score_stats are of the summed score
    held_out = TRAIN[val]
    eq5 = score_batch(model, held_out, plain).scores
    dist = torch.cdist(_features(model, held_out), model.feature_bank).topk(3, dim=1, largest=False).values.mean(1)
    torch.testing.assert_close(torch.tensor([a, b, c, d]), torch.stack([eq5.mean(), eq5.std(), dist.mean(), dist.std()]),
                               atol=1e-4, rtol=1e-4)
    # the weights: the share of eq. 5 that best tells foreign patches made of the held-out images from them
    foreign = foreign_patches(held_out, 128, seed=CONFIG.seed)
    near_foreign = torch.cdist(_features(model, foreign * 255), model.feature_bank).topk(3, dim=1, largest=False)
    assert model.neighbour_weights == choose_weights(eq5, dist, score_batch(model, foreign, plain).scores,
                                                     near_foreign.values.mean(1))
    assert abs(model.score_stats["mean"]) < 1e-4 and model.score_stats["count"] == len(val)
    torch.testing.assert_close(model.normalize(score_batch(model, held_out).scores).mean(), torch.tensor(0.0), atol=1e-4, rtol=0)
    # patch errors, the localization map, are eq. 2's as without the bank
    torch.testing.assert_close(result.patch_errors, score_batch(model, TEST, plain).patch_errors)


def test_every_scoring_path_agrees_and_the_model_file_keeps_the_bank(model, tmp_path):
    expected = score_batch(model, TEST).scores
    torch.testing.assert_close(Scorer(model, compile="none")(TEST)[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(Scorer(model, compile="none", forward_batch=8)(TEST)[0], expected, atol=1e-5, rtol=1e-5)
    model.save(tmp_path / "m.pgf")
    loaded = PatchGAN.load(tmp_path / "m.pgf")
    assert (loaded.config, loaded.neighbour_scales, loaded.score_stats) == (model.config, model.neighbour_scales,
                                                                           model.score_stats)
    assert torch.equal(loaded.feature_bank, model.feature_bank)
    assert torch.equal(score_batch(loaded, TEST).scores, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_gpu_scorer_adds_the_same_distances(model):
    expected = score_batch(model, TEST).scores
    for precision, tol in (("fp32", 1e-3), ("bf16", 5e-2)):  # the feature network runs in fp32 either way
        got = Scorer(model, device="cuda", precision=precision, compile="none")(TEST)[0].cpu()
        torch.testing.assert_close(got, expected, atol=tol * float(expected.abs().max()), rtol=0)


def test_a_bank_can_be_added_to_a_trained_model_and_replaced():
    plain = PatchGAN.fit(TRAIN, dataclasses.replace(CONFIG, neighbours=None))
    assert plain.feature_bank is None and plain.score_config.neighbour_scales is None
    before = score_batch(plain, TEST).scores
    val, train = validation_split(len(TRAIN), CONFIG)
    plain.add_neighbours(TRAIN[train], TRAIN[val], "discriminator", k=2)
    assert plain.config.neighbours == "discriminator" and plain.config.neighbour_k == 2
    assert len(plain.feature_bank) == len(train)
    after = score_batch(plain, TEST)
    a, b, c, d = plain.neighbour_scales
    u, v = plain.neighbour_weights
    torch.testing.assert_close(after.scores, u * (before - a) / b + v * (after.neighbour_distances - c) / d, atol=1e-4,
                               rtol=1e-4)
    plain.add_neighbours(TRAIN[train[:5]], TRAIN[val], "bottleneck", k=1)  # replaces the bank and the units
    assert len(plain.feature_bank) == 5 and plain.config.neighbours == "bottleneck"
    assert torch.allclose(score_batch(plain, TRAIN[train[:5]]).neighbour_distances, torch.zeros(5), atol=1e-3)


@torch.inference_mode()
def test_the_joint_space_puts_both_unit_vectors_side_by_side(model):
    both = Embedding(model, "discriminator+bottleneck")(normalize_reference(TEST, model.mean, model.std))
    by_hand = torch.cat([_features(model, TEST, "discriminator"), _features(model, TEST, "bottleneck")], 1) / 2**0.5
    torch.testing.assert_close(both, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.norm(dim=1), torch.ones(len(TEST)))


def test_bad_settings_are_refused_with_what_was_given(model):
    spaces = r"discriminator, bottleneck, discriminator\+bottleneck, patches"
    for bad, message in ((dict(neighbours="pixels"), f"expected features one of {spaces}, got 'pixels'"),
                         (dict(val_fraction=0.0), "needs held-out images to scale its score: val_fraction > 0, got 0.0"),
                         (dict(neighbour_k=0), "neighbour_k must be a positive int, got 0"),
                         (dict(neighbour_k=30), r"neighbour_k \(30\) must not exceed neighbour_bank \(20\)")):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(CONFIG, **bad)
    # too few images for the held-out units: refused before training, not after it
    with pytest.raises(ValueError, match="needs at least 2 held-out images and neighbour_k = 3 training images, got 1 and 3"):
        PatchGAN.fit(blobs(4), CONFIG)
    val, train = validation_split(len(TRAIN), CONFIG)
    with pytest.raises(ValueError, match=r"expected k in 1\.\.20 \(the bank images\), got 21"):
        model.add_neighbours(TRAIN[train[:20]], TRAIN[val], k=21)
    with pytest.raises(ValueError, match="expected at least 2 held-out images to scale the scores, got 1"):
        model.add_neighbours(TRAIN[train], TRAIN[val[:1]])
    with pytest.raises(ValueError, match=r"neighbour_scales must be four finite floats .* got \(0.0, 0.0, 1.0, 1.0\)"):
        ScoreConfig(neighbour_scales=(0.0, 0.0, 1.0, 1.0))
    for weights in ((0.0, 0.0), (-1.0, 1.0), (1.0,), 0.5, (float("nan"), 1.0)):
        with pytest.raises(ValueError, match=r"neighbour_weights must be two finite floats >= 0, not both 0 \(eq. 5, "
                                             rf"distance\), got {re.escape(repr(weights))}"):
            ScoreConfig(neighbour_weights=weights)
    plain = PatchGAN(dataclasses.replace(CONFIG, neighbours=None), 1, (0.5,), (0.2,))
    config = dataclasses.replace(plain.score_config, neighbour_scales=(0.0, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"neighbour_scales is set but the model \(PatchGAN\) has no feature bank"):
        score_batch(plain, TEST, config)
    with pytest.raises(ValueError, match=r"neighbour_scales is set but the model \(PatchGAN\) has no feature bank"):
        Scorer(plain, config)
    with pytest.raises(RuntimeError, match="this model has no feature bank"):
        plain.neighbour_distances(TEST)


def _normal_folder(tmp_path):
    """tmp_path/normal holding blobs(24) as 0.png ... 23.png."""
    (tmp_path / "normal").mkdir()
    for i, im in enumerate(blobs(24)):
        Image.fromarray(im[0].numpy()).save(tmp_path / "normal" / f"{i}.png")


def test_the_train_command_gives_the_model_a_bank_that_screening_uses(tmp_path):
    _normal_folder(tmp_path)
    out = tmp_path / "m.pgf"
    assert main(["train", str(tmp_path / "normal"), "--out", str(out), "--size", "32", "--steps", "2", "--width", "8",
                 "--depth", "2", "--batch-size", "8", "--workers", "0", "--neighbours", "discriminator",
                 "--neighbour-k", "2", "--neighbour-bank", "10"]) == 0
    model = PatchGAN.load(out)
    assert model.config.neighbours == "discriminator" and model.config.neighbour_k == 2 and len(model.feature_bank) == 10
    screened = tmp_path / "screened"
    assert main(["screen", str(out), str(tmp_path / "normal"), "--out", str(screened), "--workers", "0",
                 "--compile", "none"]) == 0
    assert "discriminator features to those of its 2 nearest normal training images" in (screened / "report.html").read_text()
    with open(screened / "scores.csv", newline="") as f:
        rows = {r["path"].rsplit("/", 1)[-1]: float(r["score"]) for r in csv.DictReader(f)}
    names = [f"{i}.png" for i in range(24)]
    expected = score_batch(model, blobs(24)).scores
    torch.testing.assert_close(torch.tensor([rows[n] for n in names]), expected, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- the 'patches' space


def _direct_ranks(images):
    """ranks computed another way: for each foreground pixel, the foreground pixels of its channel at or below it,
    counted by comparing every pair, over the foreground's size."""
    x = unit_images(images).double()
    out = torch.zeros_like(x)
    for i in range(len(x)):
        fg = (x[i] != 0).any(0)
        for c in range(x.shape[1]):
            v = x[i, c][fg]
            out[i, c][fg] = (v[None, :] <= v[:, None]).sum(1).double() / len(v)
    return out.float()


def _direct_patch_maps(query, bank, k, description="ranks"):
    """patch_distance_maps computed another way: each bank image shifted by every offset (zeros where it leaves
    the frame), channel-summed squared differences, their p x p window sums over the pixels inside the image
    divided by the window's size inside the image (a convolution with ones), the minimum over the k most similar
    bank images (their ranks, or pixels, pooled 16 x 16) and the offsets; 0 within e pixels of a background
    pixel."""
    n, c, h, w = query.shape
    p, r, e = patch_geometry(min(h, w))
    seen = _direct_ranks if description == "ranks" else unit_images
    pool = lambda x: torch.nn.functional.adaptive_avg_pool2d(seen(x), 16).flatten(1)  # noqa: E731
    order = ((pool(query)[:, None] - pool(bank)[None]) ** 2).sum(2).argsort(1)[:, :k]
    ones = torch.ones(1, 1, p, p, dtype=torch.float64)
    count = torch.nn.functional.conv2d(torch.ones(1, 1, h, w, dtype=torch.float64), ones, padding=p // 2)
    out = torch.empty(n, h, w, dtype=torch.float64)
    for i in range(n):
        best = torch.full((h, w), float("inf"), dtype=torch.float64)
        for j in order[i].tolist():
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    shifted = torch.zeros(c, h, w, dtype=torch.float64)
                    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
                    yb, xb = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx))
                    shifted[:, ys, xs] = bank[j, :, yb, xb].double()
                    d = ((shifted - query[i].double()) ** 2).sum(0)[None, None]
                    best = torch.minimum(best, (torch.nn.functional.conv2d(d, ones, padding=p // 2) / count)[0, 0])
        out[i] = best
    background = (query == 0).all(1)
    near_background = torch.zeros_like(background)
    for i, y, x in background.nonzero().tolist():
        near_background[i, max(0, y - e):y + e + 1, max(0, x - e):x + e + 1] = True
    return (out * ~near_background).float()


def _brains(n, size=64, seed=0):
    """Two-channel images, a bright textured disc on a zero background (a skull-stripped slice, roughly)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = torch.zeros(n, 2, size, size)
    for i in range(n):
        radius = size * (0.35 + 0.05 * float(torch.rand(1, generator=g)))
        inside = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < radius**2
        out[i] = (0.4 + 0.4 * torch.rand(2, size, size, generator=g)) * inside
    return out


def test_foreign_patches_paste_a_square_of_another_image_into_the_foreground():
    images = _brains(6, 64)
    foreign = foreign_patches(images, 15, seed=3)
    assert foreign.shape == (15, 2, 64, 64) and foreign.dtype == torch.float32
    assert torch.equal(foreign, foreign_patches(images, 15, seed=3))  # seeded
    assert not torch.equal(foreign, foreign_patches(images, 15, seed=4))
    assert torch.equal(foreign_patches((images * 255).round().to(torch.uint8), 3, seed=3),
                       foreign_patches((images * 255).round() / 255, 3, seed=3))  # uint8 as read, or float
    for i, x in enumerate(foreign):
        source = images[i % 6]  # image i % M, changed in one square inside its foreground, nowhere else
        changed = (x != source).any(0)
        assert changed.any() and not changed[(source == 0).all(0)].any()
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        assert rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16  # sides 4-16 at 64x64
    assert float(foreign.min()) >= 0 and float(foreign.max()) <= 1
    full = torch.rand(3, 1, 32, 32) * 0.5 + 0.25  # no background: anywhere
    assert ((foreign_patches(full, 3) != full).flatten(1).any(1)).all()
    with pytest.raises(ValueError, match=r"expected at least 2 images \[M, C, H, W\] to make foreign patches of, "
                                         r"got \(1, 2, 64, 64\)"):
        foreign_patches(images[:1], 4)


def test_the_weights_leave_out_a_term_that_cannot_tell_foreign_patches_from_normal_images():
    g = torch.Generator().manual_seed(0)
    normal, same, higher = (torch.randn(200, generator=g) for _ in range(3))
    higher += 2  # foreign patches score higher
    assert EQ5_SHARES[0] == 0 and EQ5_SHARES[-1] == 1
    rounded = (higher * 2).round()  # ties between the two groups count half, as roc_auc_score counts them
    expected = roc_auc_score([0] * 200 + [1] * 200, torch.cat([(normal * 2).round(), rounded]).numpy())
    assert abs(auroc((normal * 2).round(), rounded) - expected) < 1e-12
    assert choose_weights(normal, normal * 3 + 1, same, higher * 3 + 1) == (0.0, 1.0)  # eq. 5 blind: the distance alone
    assert choose_weights(normal * 5, normal, higher * 5, same) == (1.0, 0.0)  # the distance blind: eq. 5 alone
    # both terms the same evidence: every share ranks alike, and the tie goes to the even sum
    assert choose_weights(normal, normal * 2, higher, higher * 2) == (0.5, 0.5)
    # two independent, equally good terms: their sum tells best
    other, other_higher = torch.randn(200, generator=g), torch.randn(200, generator=g) + 2
    assert choose_weights(normal, other, higher, other_higher) == (0.5, 0.5)


def test_patch_distance_maps_equal_a_direct_search():
    assert [patch_geometry(s) for s in (32, 64, 128)] == [(1, 1, 1), (3, 2, 1), (5, 4, 2)]
    bank, query = _brains(7), _brains(3, seed=1)
    query[2] = torch.rand(2, 64, 64) * 0.9 + 0.05  # no background: nothing left out
    got = patch_distance_maps(query, bank, k=3, chunk_elements=3 * 64 * 64 * 2)  # two queries per chunk
    torch.testing.assert_close(got, _direct_patch_maps(query, bank, 3), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patch_distance_maps(query, bank, k=3, description="pixels"),
                               _direct_patch_maps(query, bank, 3, "pixels"), atol=1e-5, rtol=1e-5)
    assert (got[:2] == 0).any() and (got[2] > 0).all()
    # a bank stored as uint8 (bank_images) differs by the rounding alone: at most 1/510 per pixel
    stored = bank_images(bank)
    assert stored.dtype == torch.uint8 and (unit_images(stored) - bank).abs().max() <= 0.5 / 255 + 1e-7
    torch.testing.assert_close(patch_distance_maps(query, stored, k=3), _direct_patch_maps(query, unit_images(stored), 3),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patch_distances(query, bank, 3),
                               torch.nn.functional.avg_pool2d(got[:, None], 3, 1, 1).flatten(1).amax(1))
    # a caller that keeps its bank's description passes it, with the same maps
    assert torch.equal(patch_distance_maps(query, bank, k=3, bank_description=describe(bank)),
                       patch_distance_maps(query, bank, k=3))
    with pytest.raises(ValueError, match="expected bank_description of the 7 bank images, got 6 rows"):
        patch_distance_maps(query, bank, k=3, bank_description=describe(bank[:6]))


def test_the_distance_window_grows_with_the_image(monkeypatch):
    assert [peak_window(s) for s in (32, 64, 128, 256)] == [3, 3, 5, 9]  # the patch side, at least 3
    maps = torch.rand(4, 16, 16)
    torch.testing.assert_close(peaks(maps, 5), torch.nn.functional.avg_pool2d(maps[:, None], 5, 1, 2).flatten(1).amax(1))
    assert torch.equal(peaks(maps), peaks(maps, 3))
    model = PatchGAN(TrainConfig(**{**SMALL, "image_size": 128}), 2, (0.5, 0.5), (0.25, 0.25))  # untrained will do
    monkeypatch.setattr(patchgan_module, "FOREIGN_PATCHES", 8)  # fewer foreign patches to weigh the terms: faster
    images = bank_images(_brains(14, 128))
    model.add_neighbours(images[:10], images[10:], "patches", k=4)
    assert model.patch_window == 5
    query = _brains(3, 128, seed=5)
    expected = peaks(patch_distance_maps(query, model.feature_bank, 4, model.patch_outline), 5)
    torch.testing.assert_close(model.neighbour_distances(query), expected)
    torch.testing.assert_close(patch_distances(query, model.feature_bank, 4, model.patch_outline), expected)
    torch.testing.assert_close(score_batch(model, query).neighbour_distances, expected)
    torch.testing.assert_close(Scorer(model, compile="none")(query)[0], score_batch(model, query).scores)
    state = model.state()
    assert state["patch_window"] == 5 and PatchGAN.from_state(state).patch_window == 5
    del state["patch_window"]  # a file written before the window grew with the size: 3, with which its units were measured
    old = PatchGAN.from_state(state)
    assert old.patch_window == 3
    torch.testing.assert_close(old.neighbour_distances(query), peaks(patch_distance_maps(
        query, model.feature_bank, 4, model.patch_outline), 3))
    for bad in (4, 0, "5", True):
        state["patch_window"] = bad
        with pytest.raises(ValueError, match=f"damaged model.*patch_window {re.escape(repr(bad))} is not a positive odd"):
            PatchGAN.from_state(state)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_a_128_bank_scores_the_same_on_the_device_it_moves_to(monkeypatch, device):
    """The channels_last search, the 5x5 window and the bank's description, described again where it moves."""
    bank, query = bank_images(_brains(12, 128)), _brains(5, 128, seed=3)
    expected_maps = patch_distance_maps(query, bank, 6)  # on the CPU (the direct search's equal: above)
    torch.testing.assert_close(patch_distance_maps(query.to(device), bank.to(device), 6).cpu(), expected_maps,
                               atol=1e-5, rtol=1e-4)
    monkeypatch.setattr(patchgan_module, "FOREIGN_PATCHES", 8)
    model = PatchGAN(TrainConfig(**{**SMALL, "image_size": 128}), 2, (0.5, 0.5), (0.25, 0.25))
    model.add_neighbours(bank[:8], bank[8:], "patches", k=4)
    expected = model.neighbour_distances(query)  # its bank described on the CPU
    moved = model.to(device)
    assert moved.bank_description().device.type == device
    torch.testing.assert_close(moved.neighbour_distances(query.to(device)).cpu(), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(Scorer(moved, device=device, compile="none")(query)[0].cpu(),
                               score_batch(moved, query.to(device)).scores.cpu(), atol=1e-4, rtol=1e-4)


def test_ranks_see_the_anatomy_whatever_the_contrast():
    images = _brains(3)
    images[2, :, :5] = torch.rand(2, 5, 64) * 0.9 + 0.05  # a foreground pixel may be 0 in one channel only
    images[2, 0, 0, 0] = 0.0
    got = ranks(images)
    torch.testing.assert_close(got, _direct_ranks(images))  # ties (the flat parts) share the highest rank
    fg = (images != 0).any(1, keepdim=True)
    assert (got[~fg.expand_as(got)] == 0).all() and (got[fg.expand_as(got)] > 0).all() and got.max() == 1
    torch.testing.assert_close(ranks(images * 0.5), got)  # a gain changes nothing, nor does a gamma change (but
    torch.testing.assert_close(ranks(images ** 0.6), got, atol=1e-3, rtol=0)  # where rounding makes two values equal)
    stored = bank_images(images)
    torch.testing.assert_close(ranks(stored), ranks(unit_images(stored)))
    assert ranks(torch.zeros(1, 1, 8, 8)).eq(0).all()  # no foreground: nothing to rank
    # the bank image most like a query of another contrast: its own anatomy by ranks, a plain other by pixels
    bank = torch.full((2, 1, 32, 32), 0.75)
    bank[0, :, :, 16:] = 0.2  # dark on the right
    query = bank[:1].clone()
    query[0, :, :, :16], query[0, :, :, 16:] = 0.9, 0.6  # the same image, brighter and with less contrast
    nearest = {d: int(torch.cdist(describe(query, d), describe(bank, d)).argmin()) for d in ("ranks", "pixels")}
    assert nearest == {"ranks": 0, "pixels": 1}
    with pytest.raises(ValueError, match="expected description one of ranks, pixels, got 'edges'"):
        describe(bank, "edges")


def test_a_patch_unlike_any_nearby_is_where_the_map_is_high():
    bank = _brains(6)
    query = bank[2:3].clone()
    torch.testing.assert_close(patch_distance_maps(query, bank, 6), torch.zeros(1, 64, 64))  # a bank image: 0 everywhere
    query[0, :, 30:34, 20:24] = 0.05  # a dark spot inside the disc
    maps = patch_distance_maps(query, bank, 6)[0]
    ys, xs = maps.nonzero().unbind(1)
    assert maps.amax() > 0.1 and 27 <= ys.min() and ys.max() <= 36 and 17 <= xs.min() and xs.max() <= 26


def test_the_outline_is_left_out_where_normal_maxima_crowd_it():
    # 32x32 discs of varying radius: normal images differ most along the outline, so their maxima crowd it
    bank, held = _brains(8, 32), _brains(6, 32, seed=1)
    maps = patch_distance_maps(held, bank, 8, outline=0)
    ring = leave_outline(torch.ones(6, 32, 32), held, 0) - leave_outline(torch.ones(6, 32, 32), held, 1)
    place = torch.nn.functional.avg_pool2d(maps[:, None], 3, 1, 1).flatten(1).argmax(1)
    assert ring.flatten(1)[torch.arange(6), place].mean() > ring.flatten(1).sum(1).mean() / 32**2
    assert choose_outline(maps, held, most=3) == 1 and choose_outline(maps, held, most=0) == 0
    torch.testing.assert_close(peaks(leave_outline(maps, held, 1)), patch_distances(held, bank, 8, outline=1))
    # 64x64 discs with the same noise: the texture, not the outline, sets the maxima; nothing is left out
    bank, held = _brains(8, 64), _brains(6, 64, seed=1)
    assert choose_outline(patch_distance_maps(held, bank, 8, outline=0), held, most=3) == 0
    full = held + 0.1  # no background, no outline
    assert choose_outline(patch_distance_maps(full, bank + 0.1, 8, outline=0), full, most=3) == 0


def test_a_patches_bank_holds_the_images_and_every_path_scores_with_it(tmp_path):
    config = dataclasses.replace(CONFIG, neighbours="patches", neighbour_k=None)
    assert config.neighbour_k == 20  # the default, 40, at most the bank
    assert TrainConfig(neighbours="patches").neighbour_k == 40 and TrainConfig().neighbour_k == 5
    model = PatchGAN.fit(TRAIN, config)
    val, train = validation_split(len(TRAIN), config)
    bank = TRAIN[train[bank_choice(len(train), config)]]
    assert torch.equal(model.feature_bank, bank)  # the training images as uint8, as read
    held = TRAIN[val].float() / 255  # the outline: chosen on the validation images' maps against the bank
    assert model.patch_outline == choose_outline(patch_distance_maps(held, model.feature_bank, 20, outline=0), held,
                                                 most=patch_geometry(32)[1])
    result = score_batch(model, TEST)
    torch.testing.assert_close(result.neighbour_distances,
                               patch_distances(TEST.float() / 255, bank.float() / 255, 20, model.patch_outline),
                               atol=1e-5, rtol=1e-5)
    a, b, c, d = model.neighbour_scales
    u, v = model.neighbour_weights
    plain = dataclasses.replace(model.score_config, neighbour_scales=None)
    torch.testing.assert_close(result.scores, u * (score_batch(model, TEST, plain).scores - a) / b
                               + v * (result.neighbour_distances - c) / d, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(Scorer(model, compile="none", forward_batch=8)(TEST)[0], result.scores, atol=1e-5, rtol=1e-5)
    model.save(tmp_path / "m.pgf")
    loaded = PatchGAN.load(tmp_path / "m.pgf")
    assert loaded.config == model.config and torch.equal(loaded.feature_bank, model.feature_bank)
    assert loaded.patch_outline == model.patch_outline
    assert model.patch_description == loaded.patch_description == "ranks"
    assert torch.equal(score_batch(loaded, TEST).scores, result.scores)
    state = model.state()
    del state["patch_outline"]  # a file written before the outline was chosen: patch_geometry's (1 at 32x32)
    assert PatchGAN.from_state(state).patch_outline is None
    torch.testing.assert_close(score_batch(PatchGAN.from_state(state), TEST).neighbour_distances,
                               patch_distances(TEST.float() / 255, bank.float() / 255, 20, 1), atol=1e-5, rtol=1e-5)
    state = model.state()
    del state["patch_description"]  # a file written before ranks: its bank slices were found by their pixels
    assert PatchGAN.from_state(state).patch_description == "pixels"
    torch.testing.assert_close(score_batch(PatchGAN.from_state(state), TEST).neighbour_distances,
                               patch_distances(TEST.float() / 255, bank.float() / 255, 20, model.patch_outline,
                                               "pixels"), atol=1e-5, rtol=1e-5)
    state["patch_description"] = "edges"
    with pytest.raises(ValueError, match="damaged model.*'edges'"):
        PatchGAN.from_state(state)
    assert loaded.neighbour_weights == model.neighbour_weights
    assert model.neighbour_weights in [(w, 1 - w) for w in EQ5_SHARES]
    state = model.state()
    del state["neighbour_weights"]  # a file written before the weights were chosen: the plain sum, as then
    old = PatchGAN.from_state(state)
    assert old.neighbour_weights == (1.0, 1.0)
    torch.testing.assert_close(score_batch(old, TEST).scores, (score_batch(model, TEST, plain).scores - a) / b
                               + (result.neighbour_distances - c) / d, atol=1e-4, rtol=1e-4)
    # Table 2's row of the even sum, from the weighted score and eq. 5 alone, is what scoring with (1, 1) gives
    weights = (0.25, 0.75)
    weighted = score_batch(model, TEST, dataclasses.replace(model.score_config, neighbour_weights=weights)).scores
    even = score_batch(model, TEST, dataclasses.replace(model.score_config, neighbour_weights=(1.0, 1.0))).scores
    torch.testing.assert_close(summed_evenly(weighted, score_batch(model, TEST, plain).scores, model.neighbour_scales,
                                             weights), even, atol=1e-4, rtol=1e-4)
    state = model.state()  # a file written while the bank was stored as float32 still loads, and scores the same
    state["feature_bank"] = bank.float() / 255
    torch.testing.assert_close(score_batch(PatchGAN.from_state(state), TEST).scores, result.scores, atol=1e-5, rtol=1e-5)
    # the abnormal test images (a bright square) are farther from the bank than the normal ones (blobs lie anywhere,
    # unlike registered images, so a normal image's blob can also be far from every bank blob within 1 pixel)
    assert result.neighbour_distances[6:].mean() > 2 * result.neighbour_distances[:6].mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_gpu_scorer_adds_the_same_patch_distances():
    model = PatchGAN.fit(TRAIN, dataclasses.replace(CONFIG, neighbours="patches", neighbour_k=None))
    expected = score_batch(model, TEST)
    gpu = copy.deepcopy(model).cuda()
    torch.testing.assert_close(gpu.neighbour_distances(TEST.cuda()).cpu(), expected.neighbour_distances,
                               atol=1e-5, rtol=1e-4)
    got = Scorer(model, device="cuda", precision="bf16", compile="none")(TEST)[0].cpu()
    torch.testing.assert_close(got, expected.scores, atol=5e-2 * float(expected.scores.abs().max()), rtol=0)


def test_a_patches_model_maps_both_parts_of_its_score(monkeypatch):
    config = dataclasses.replace(CONFIG, neighbours="patches", neighbour_k=None)
    model = PatchGAN.fit(TRAIN, config)
    described = []  # the bank is described once, not at every call (the model) or chunk (the scorer)
    for module in (patchgan_module, scorer_module, neighbours_module):
        monkeypatch.setattr(module, "describe", lambda x, d="ranks", _f=describe: described.append(len(x)) or _f(x, d))
    first = model.patch_distance_maps(TEST)
    assert torch.equal(model.patch_distance_maps(TEST), first) and len(model.neighbour_distances(TEST)) == len(TEST)
    Scorer(model, compile="none", forward_batch=model.config.num_copies)(TEST)  # one image per chunk
    m = len(model.feature_bank)
    assert described.count(m) == 2 and described.count(len(TEST)) == 3 and described.count(1) == len(TEST)
    model.feature_bank = model.feature_bank.flip(0)  # a new bank (the same images, reordered): described anew
    assert torch.equal(model.patch_distance_maps(TEST), first) and described.count(m) == 3
    plain = dataclasses.replace(model.score_config, neighbour_scales=None)
    _, b, _, d = model.neighbour_scales
    u, v = model.neighbour_weights
    near = model.patch_distance_maps(TEST)
    torch.testing.assert_close(near, patch_distance_maps(TEST.float() / 255, model.feature_bank, 20, model.patch_outline))
    w = model.map_window  # the window that fills the distance maps, chosen on foreign patches in the validation images
    held = TRAIN[validation_split(len(TRAIN), config)[0]]
    foreign = foreign_patches(held, 128, seed=config.seed)
    assert w == choose_map_window(patch_distance_maps(foreign, model.feature_bank, 20, model.patch_outline),
                                  changed_pixels(foreign, held), (foreign > 0).any(1))
    for model.map_window in sorted({w, 5}):  # (blobs choose 1: a window is also set by hand)
        smoothed = torch.maximum(near, torch.nn.functional.avg_pool2d(
            near[:, None], model.map_window, 1, model.map_window // 2, count_include_pad=False)[:, 0])
        torch.testing.assert_close(error_maps(model, TEST), u * error_maps(model, TEST, plain) / b + v * smoothed / d)
    model.map_window = w
    state = model.state()
    assert state["map_window"] == w and PatchGAN.from_state(state).map_window == w
    del state["map_window"]  # a file written before it was chosen: the map as it is
    assert PatchGAN.from_state(state).map_window == 1
    for bad in (2, 0, "3", True):
        state["map_window"] = bad
        with pytest.raises(ValueError, match=f"damaged model.*map_window {re.escape(repr(bad))} is not a positive odd"):
            PatchGAN.from_state(state)
    torch.testing.assert_close(error_maps(model, TEST, patch_maps=near, batch=5), error_maps(model, TEST))  # given maps
    with pytest.raises(ValueError, match=r"one \[H, W\] map per image: expected \(12, 32, 32\), got \(11, 32, 32\)"):
        error_maps(model, TEST, patch_maps=near[:11])
    with pytest.raises(ValueError, match="for a score without the patches term"):
        error_maps(model, TEST, plain, patch_maps=near)
    with pytest.raises(ValueError, match=r"the patches bank holds images of \(1, 32, 32\) \(C, H, W\); expected images of "
                                         r"that shape, got \(1, 16, 16\)"):
        model.patch_distance_maps(TEST[:, :, :16, :16])
    with pytest.raises(RuntimeError, match="this model has no bank of patches \\(its feature bank: bottleneck\\)"):
        PatchGAN.fit(TRAIN, CONFIG).patch_distance_maps(TEST)


def test_a_patches_score_says_where_its_top_patch_is_and_reconstructs_only_when_eq5_counts(tmp_path):
    """With a patches term the patch errors are each patch's part of the score, so the top patch (scores.csv's) is
    where the score comes from; a score that weighs eq. 5 0 reconstructs nothing on the fast path."""
    from patchgan_fast.app.screening import screen

    model = PatchGAN.fit(TRAIN, dataclasses.replace(CONFIG, neighbours="patches", neighbour_k=None))
    eq5 = score_batch(model, TEST, dataclasses.replace(model.score_config, neighbour_scales=None))
    maps = model.patch_distance_maps(TEST)
    windowed = torch.nn.functional.avg_pool2d(maps[:, None], 3, 1, 1)[:, 0]  # the 3x3 window of 32x32 images
    places = windowed.view(12, 4, 8, 4, 8).amax((2, 4))  # the largest in each 8x8 patch
    peak = windowed.flatten(1).argmax(1)
    peak_patch = (peak // 32 // 8) * 4 + peak % 32 // 8
    _, b, _, d = model.neighbour_scales
    position = torch.tensor(model.patch_weights)
    (tmp_path / "test").mkdir()
    for i, im in enumerate(TEST):
        Image.fromarray(im[0].numpy()).save(tmp_path / "test" / f"{i:02d}.png")
    for u, v in ((0.0, 1.0), (0.25, 0.75)):
        model.neighbour_weights = (u, v)
        result = score_batch(model, TEST)
        torch.testing.assert_close(result.neighbour_distances, places.flatten(1).amax(1))
        torch.testing.assert_close(result.neighbour_distances, peaks(maps, 3))
        torch.testing.assert_close(result.patch_errors, v * places / d + u * eq5.patch_errors * position / b)
        scorer = Scorer(model, compile="none", forward_batch=8)
        copies = []
        scorer.net.register_forward_hook(lambda module, args, out: copies.append(len(out)))
        scores, errors = scorer(TEST)
        torch.testing.assert_close(scores, result.scores, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(errors, result.patch_errors, atol=1e-5, rtol=1e-5)
        assert sum(copies) == (0 if u == 0 else len(TEST) * model.config.num_copies)
        top = scorer.top_patches(errors)
        assert torch.equal(top, result.patch_errors.flatten(1).argmax(1))  # the weights are in already
        if u == 0:  # the patch holding the distance's peak
            assert torch.equal(top, peak_patch)
        summary = screen(model, [tmp_path / "test"], tmp_path / f"screened{u:g}", progress=False, num_workers=0,
                         compile="none")
        assert summary.scored == len(TEST)
        with open(tmp_path / f"screened{u:g}" / "scores.csv", newline="") as f:
            rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
        for i, t in enumerate(top.tolist()):
            row = rows[f"{i:02d}.png"]
            assert (int(row["top_y"]), int(row["top_x"])) == (t // 4 * 8, t % 4 * 8)
            assert float(row["score"]) == pytest.approx(float(scores[i]), abs=1e-4)
    # a model without a patches term: the top patch is eq. 5's first, its errors times the position weights
    plain = Scorer(model, dataclasses.replace(model.score_config, neighbour_scales=None), compile="none")
    assert not plain.patches and plain.reconstructs
    torch.testing.assert_close(plain(TEST)[1], eq5.patch_errors)
    assert torch.equal(plain.top_patches(eq5.patch_errors), (eq5.patch_errors * position).flatten(1).argmax(1))


def test_the_map_window_fills_a_region_whose_rim_alone_lights_up_and_leaves_a_sharp_map_as_it_is():
    truth = torch.zeros(6, 32, 32, dtype=torch.bool)
    for i in range(6):
        truth[i, 4 + 3 * i:12 + 3 * i, 10:18] = True  # an 8x8 square
    inside = torch.ones_like(truth)
    noise = 0.05 * torch.rand(truth.shape, generator=torch.Generator().manual_seed(0))
    assert choose_map_window(truth.float() + noise, truth, inside) == 1  # the map finds the square itself: no filter
    rim = truth.float() - torch.nn.functional.avg_pool2d(truth.float()[:, None], 3, 1, 1)[:, 0].eq(1).float()
    w = choose_map_window(rim + noise, truth, inside)  # its rim only, its flat inside dark
    assert w in map_windows(32) and w > 1
    assert average_precision(rim.flatten(), truth.flatten()) < 1
    mean = torch.nn.functional.avg_pool2d((rim + noise)[:, None], w, 1, w // 2, count_include_pad=False)[:, 0]
    assert torch.equal(filled(rim + noise, w), torch.maximum(rim + noise, mean)) and filled(rim, 1) is rim
    found = {v: average_precision(filled(rim + noise, v)[inside], truth[inside]) for v in (1, w)}
    assert found[w] > found[1]
    assert map_windows(64) == tuple(range(1, 18, 2)) and map_windows(128)[-1] == 33
    # the changed pixels of foreign patches are where the pasted square made them differ from their image
    images = _brains(4, 32)
    foreign = foreign_patches(images, 6, seed=1)
    changed = changed_pixels(foreign, images)
    assert changed.any((1, 2)).all() and torch.equal(changed, (foreign != images[torch.arange(6) % 4]).any(1))


def test_the_train_command_gives_a_bank_of_patches_that_the_report_explains(tmp_path, capsys):
    _normal_folder(tmp_path)
    out = tmp_path / "m.pgf"
    assert main(["train", str(tmp_path / "normal"), "--out", str(out), "--size", "32", "--steps", "2", "--width", "8",
                 "--depth", "2", "--batch-size", "8", "--workers", "0", "--neighbours", "patches"]) == 0
    model = PatchGAN.load(out)
    u, v = model.neighbour_weights
    assert f"score: eq. 5 x {u:g} + nearest-neighbour patches distance x {v:g}, each in units" in capsys.readouterr().err
    # the 22 training images (2 validate) are the bank; k, 40 by default, is capped at them
    assert tuple(model.feature_bank.shape) == (22, 1, 32, 32)
    assert model.config.neighbours == "patches" and model.config.neighbour_k == 22
    screened = tmp_path / "screened"
    assert main(["screen", str(out), str(tmp_path / "normal"), "--out", str(screened), "--workers", "0",
                 "--compile", "none"]) == 0
    report = (screened / "report.html").read_text()
    n = model.patch_outline  # chosen on the 2 validation images: here 0
    outline = "nothing of the foreground's outline left out" if n == 0 else f"the foreground's outermost {n} pixel"
    assert f"nearest patch near the same place in its 22 most similar normal training images ({outline}" in report
    assert f"weighted {u:g} and {v:g}: the weights that best tell foreign patches" in report
    assert "each patch's distance to the nearest normal patch" in report
