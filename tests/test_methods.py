"""Every registered method trains and scores on a tiny dataset; unknown names list the valid ones."""

import copy
import dataclasses
import os
import signal

import pytest
import torch
from helpers import blobs
from sklearn.metrics import roc_auc_score

from patchgan_fast import TrainConfig, error_maps, score_batch
from patchgan_fast.evaluation import baselines
from patchgan_fast.evaluation.methods import REGISTRY, get_method
from patchgan_fast.models.schedule import bank_choice
from patchgan_fast.scoring.neighbours import filled

CONFIG = TrainConfig(image_size=32, patch_size=8, width=8, depth=2, disc_width=8, disc_layers=2, batch_size=16,
                     lr=2e-3, steps=40, val_every=20, progress=False)


#: A GAN needs more steps than 40 to draw blobs; these keep its test short.
OPTIONS = {"fanogan": (dict(steps=100), dict(lr=5e-4, critic_steps=2)), "anogan": (dict(steps=100), dict(lr=5e-4)),
           "sagan": (dict(steps=100), dict(lr=1e-3))}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_method_trains_and_scores(name):
    overrides, options = OPTIONS.get(name, ({}, {}))
    method = get_method(name, dataclasses.replace(CONFIG, **overrides), **options).fit(blobs(96))
    normal, abnormal = blobs(16, seed=5), blobs(16, seed=6, abnormal=True)
    scores, maps = method.score(torch.cat([normal, abnormal]))
    assert scores.shape == (32,) and torch.isfinite(scores).all()
    if maps is not None:
        assert maps.shape == (32, 32, 32)
    auroc = roc_auc_score([0] * 16 + [1] * 16, scores.numpy())
    # ALOCC is unstable this short; SAGAN is a semi-supervised method, weak one-class at width 8 (0.77 here):
    # tests/test_sagan.py checks that it separates a toy anomaly
    assert auroc > (0.5 if name in ("alocc", "sagan") else 0.8), f"{name}: AUROC {auroc:.3f} on obvious anomalies"


def test_multiscale_scoring_sums_normalized_scores_per_patch_size():
    method = get_method("patchgan", dataclasses.replace(CONFIG, steps=10)).fit(blobs(96))
    model = method.model
    before = (model.config, model.patch_weights, dict(model.score_stats), model.error_scales)
    images = torch.cat([blobs(8, seed=5), blobs(8, seed=6, abnormal=True)])
    own = model.normalize(method.score(images, maps=False)[0])
    # at the model's own patch size the held-out statistics are those of training: its normalized scores
    torch.testing.assert_close(method.score_multiscale(images, [8]), own, atol=1e-4, rtol=1e-4)
    both = method.score_multiscale(images, [8, 4])
    assert both.shape == (16,) and torch.isfinite(both).all() and not torch.allclose(both, own)
    assert (model.config, model.patch_weights, dict(model.score_stats), model.error_scales) == before  # untouched
    no_val = get_method("patchgan", dataclasses.replace(CONFIG, steps=2, val_fraction=0.0)).fit(blobs(32))
    with pytest.raises(RuntimeError, match="needs at least 2 held-out normal images, got 0"):
        no_val.score_multiscale(images, [8, 4])


@pytest.mark.parametrize("space", ["discriminator", "bottleneck"])
def test_nearest_neighbour_scoring_adds_normalized_feature_distances(space):
    method = get_method("patchgan", dataclasses.replace(CONFIG, steps=10)).fit(blobs(96))
    model = method.model
    assert len(method.held_out) + len(method.trained_on) == 96
    net = model.discriminator.features if space == "discriminator" else model.reconstructor.encode

    def embed(x):  # feature maps average-pooled to 4 x 4 positions, flattened, unit length
        f = torch.nn.functional.adaptive_avg_pool2d(net((x.float() / 255 - model.mean[0]) / model.std[0]), 4)
        return torch.nn.functional.normalize(f.flatten(1), dim=1)

    images = torch.cat([blobs(8, seed=5), blobs(8, seed=6, abnormal=True)])
    near = torch.cdist(embed(images), embed(method.trained_on)).topk(3, dim=1, largest=False).values.mean(1)
    bank = method.trained_on[bank_choice(len(method.trained_on), method.config)]
    # what the model would score with that bank (add_neighbours on a copy): its distances are the kNN distances, in
    # units of the held-out images' distances, weighed with eq. 5 as add_neighbours chose
    probe = copy.deepcopy(model).add_neighbours(bank, method.held_out, space, 3)
    torch.testing.assert_close(method.score_neighbours(images, 3, space), score_batch(probe, images).scores,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(probe.neighbour_distances(images), near, atol=1e-5, rtol=1e-5)
    held = torch.cdist(embed(method.held_out), embed(bank)).topk(3, dim=1, largest=False).values.mean(1)
    torch.testing.assert_close(torch.tensor(probe.neighbour_scales[2:]), torch.stack([held.mean(), held.std()]),
                               atol=1e-5, rtol=1e-4)
    # a training image is its own nearest neighbour: k = 1 gives its minimum distance, 0
    one = copy.deepcopy(model).add_neighbours(bank, method.held_out, space, 1)
    torch.testing.assert_close(one.neighbour_distances(bank[:4]), torch.zeros(4), atol=1e-3, rtol=0)
    assert model.feature_bank is None and model.score_config.neighbour_scales is None  # the method's model is untouched


@pytest.mark.parametrize("neighbours, eq5", [("patches", None), ("patches", 0.0), ("discriminator", None),
                                             ("discriminator", 0.0), (None, None)])
def test_the_patchgan_method_scores_and_maps_as_the_package_does_computing_each_part_once(monkeypatch, neighbours,
                                                                                          eq5):
    method = get_method("patchgan", dataclasses.replace(CONFIG, steps=4, neighbours=neighbours)).fit(blobs(64))
    model = method.model
    if eq5 is not None:  # eq. 5's share of the score as the brain models at 128x128 choose it
        model.neighbour_weights = (eq5, 1 - eq5)
    images = torch.cat([blobs(6, seed=5), blobs(6, seed=6, abnormal=True)])
    expected = (score_batch(model, images).scores, error_maps(model, images))
    searches, reconstructed = [], []
    original = type(model).patch_distance_maps
    monkeypatch.setattr(type(model), "patch_distance_maps",
                        lambda self, x, *a: searches.append(len(x)) or original(self, x, *a))
    model.reconstructor.register_forward_hook(lambda module, args, out: reconstructed.append(len(out)))
    # the masked copies reconstructed once; not at all for a patches score that weighs eq. 5 0
    copies = 0 if (neighbours, eq5) == ("patches", 0.0) else model.score_config.num_copies * len(images)
    scores, maps = method.score(images)
    assert searches == ([len(images)] if neighbours == "patches" else [])  # one search for the distances and maps
    assert sum(reconstructed) == copies
    torch.testing.assert_close(scores, expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps, expected[1])
    reconstructed.clear()
    torch.testing.assert_close(method.score(images, maps=False)[0], expected[0], atol=1e-5, rtol=1e-5)
    assert sum(reconstructed) == copies
    reconstructed.clear()
    torch.testing.assert_close(error_maps(model, images), expected[1])
    assert sum(reconstructed) == copies
    if copies == 0:  # the distance's part alone, in its units
        _, _, _, d = model.neighbour_scales
        near = original(model, images)
        torch.testing.assert_close(maps, filled(near, model.map_window) / d)


def test_nearest_neighbour_scoring_refuses_bad_arguments():
    method = get_method("patchgan", dataclasses.replace(CONFIG, steps=2)).fit(blobs(32))
    images = blobs(4, seed=5)
    with pytest.raises(ValueError, match=r"expected k in 1\.\.\d+ \(the bank images\), got 0"):
        method.score_neighbours(images, k=0)
    with pytest.raises(ValueError, match="expected features one of discriminator, bottleneck, discriminator\\+bottleneck, patches, got 'pixels'"):
        method.score_neighbours(images, features="pixels")
    no_val = get_method("patchgan", dataclasses.replace(CONFIG, steps=2, val_fraction=0.0)).fit(blobs(32))
    with pytest.raises(RuntimeError, match="nearest-neighbour scoring needs at least 2 held-out normal images, got 0"):
        no_val.score_neighbours(images)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown method 'svdd'; expected one of patchgan, ae, alocc, fanogan, perceptual_ae, ocsvm, threshold"):
        get_method("svdd", CONFIG)


def test_baseline_configs_are_what_they_claim():
    ae = get_method("ae", CONFIG).config
    assert (ae.layout, ae.num_copies, ae.box_count, ae.loss_weights) == ("none", 1, (0, 0), (1.0, 0.0))
    assert get_method("alocc", CONFIG).config.loss_weights == (0.2, 1.0)


def test_perceptual_ae_uses_the_network_it_is_given():
    calls = []

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            calls.append(tuple(x.shape))
            return self.conv(x)

    method = get_method("perceptual_ae", dataclasses.replace(CONFIG, steps=2), perceptual=Features()).fit(blobs(8))
    assert calls[0] == (16, 3, 32, 32)  # gray images repeated to 3 channels, batch of 16
    scores, maps = method.score(blobs(4))
    assert scores.shape == (4,) and maps.shape == (4, 32, 32)


def test_perceptual_ae_rejects_a_network_that_returns_no_feature_map():
    with pytest.raises(ValueError, match=r"perceptual network must return \[N, C, H, W\] features, got \(16, 10\)"):
        get_method("perceptual_ae", CONFIG, perceptual=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))).fit(blobs(8))


def test_baselines_reject_images_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"fanogan: expected 32x32 images \(config.image_size\), got 16x16"):
        get_method("fanogan", CONFIG).fit(blobs(8, size=16))


def test_anogan_searches_each_query_alone_and_scores_the_paper_way():
    method = get_method("anogan", dataclasses.replace(CONFIG, steps=30), latent_steps=60).fit(blobs(64))
    x = torch.cat([blobs(3, seed=5), blobs(3, seed=6, abnormal=True)]).float() / 127.5 - 1
    z = torch.rand(6, method.latent, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scores, maps = method.search(x, z)
    alone, _ = method.search(x[2:4], z[2:4])  # each query's loss is its own: the batch does not matter
    torch.testing.assert_close(alone, scores[2:4], rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the search lowers every query's loss below where it started
        start = method._loss(x, method.D.features(x), method.G(z))
    assert (scores < start).all()
    pure = get_method("anogan", dataclasses.replace(CONFIG, steps=2), latent_steps=5, lam=0.0).fit(blobs(32))
    s, m = pure.search(x, z)  # lam = 0: A(x) is the residual R(x) = sum |x - G(z)|, the map its per-pixel terms
    torch.testing.assert_close(s, m.flatten(1).sum(1), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="anogan: expected latent_steps a positive int, got 0"):
        get_method("anogan", CONFIG, latent_steps=0)


def _parameters(method) -> list[torch.Tensor]:
    nets = [method.ae] if hasattr(method, "ae") else [method.G, method.D] + ([method.E] if hasattr(method, "E") else [])
    return [p.detach().clone() for net in nets for p in net.state_dict().values()]


# f-AnoGAN trains 3 generator steps (5 critic batches each), then 3 encoder steps: stopped in either phase; starts:
# the first batch each loop of the resumed fit draws
@pytest.mark.parametrize("name, stop_after, starts", [("fanogan", 1, [5, 0]), ("fanogan", 4, [15, 1]),
                                                      ("anogan", 2, [2]), ("perceptual_ae", 2, [2])])
def test_a_baseline_stopped_mid_training_continues_exactly_where_it_stopped(tmp_path, monkeypatch, name, stop_after,
                                                                             starts):
    config = dataclasses.replace(CONFIG, steps=3, batch_size=4)
    images, queries = blobs(12), blobs(4, seed=5)
    whole = get_method(name, config).fit(images)
    real = baselines._Resumable.step_done

    def signalled(run):  # SIGTERM (as `timeout` or a scheduler stops a run) in the middle of a step
        if run.done == stop_after - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        real(run)

    monkeypatch.setattr(baselines._Resumable, "step_done", signalled)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match=rf"{name}: stopped by signal 15 after step {stop_after} of "
                                                rf"{6 if name == 'fanogan' else 3}; fit again with checkpoint_dir="):
        get_method(name, config).fit(images, checkpoint_dir=str(tmp_path))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    saved = torch.load(tmp_path / baselines.CHECKPOINT, weights_only=True)
    assert saved["done"] == stop_after
    monkeypatch.setattr(baselines._Resumable, "step_done", real)
    drawn = []
    monkeypatch.setattr(baselines, "_batches", lambda *a, _b=baselines._batches: drawn.append(a[-1]) or _b(*a))
    resumed = get_method(name, config).fit(images, checkpoint_dir=str(tmp_path))
    assert drawn == starts
    for a, b in zip(_parameters(whole), _parameters(resumed), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(whole.score(queries)[0], resumed.score(queries)[0])
    assert torch.load(tmp_path / baselines.CHECKPOINT, weights_only=True)["done"] == (6 if name == "fanogan" else 3)


def test_a_signal_after_a_baselines_last_step_still_stops_it(tmp_path, monkeypatch):
    real = baselines._Resumable.step_done

    def signalled_at_the_end(run):
        real(run)
        if run.done == run.steps:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(baselines._Resumable, "step_done", signalled_at_the_end)
    with pytest.raises(KeyboardInterrupt, match="anogan: stopped by signal 15 after its training"):
        get_method("anogan", dataclasses.replace(CONFIG, steps=2, batch_size=4)).fit(blobs(8), checkpoint_dir=str(tmp_path))
    assert torch.load(tmp_path / baselines.CHECKPOINT, weights_only=True)["done"] == 2


def test_a_baseline_refuses_a_checkpoint_of_other_training(tmp_path):
    config = dataclasses.replace(CONFIG, steps=2, batch_size=4)
    get_method("anogan", config).fit(blobs(8), checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"fanogan: .*baseline-checkpoint.pt' is not a checkpoint of this training "
                                         r"\(expected \{'format': 1, 'method': 'fanogan', 'steps': 4\}, got "
                                         r"\{'format': 1, 'method': 'anogan', 'steps': 2\}\)"):
        get_method("fanogan", config).fit(blobs(8), checkpoint_dir=str(tmp_path))
    (tmp_path / baselines.CHECKPOINT).write_bytes(b"torn")
    with pytest.raises(ValueError, match=r"anogan: checkpoint .* is unreadable \(corrupt or truncated\?\)"):
        get_method("anogan", config).fit(blobs(8), checkpoint_dir=str(tmp_path))
