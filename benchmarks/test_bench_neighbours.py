"""The ``patches`` nearest-neighbour term (``patchgan_fast.scoring.neighbours.patch_distances``) against the
Patch-GAN's own scoring of the same images (eq. 5: K masked copies through the reconstructor, fused patch
scores), on the demo's model shape: images/s of each and their ratio, timed in the same run (what a brain
MRI model with ``neighbours='patches'`` pays for its second score). A bank of 1,000 images, the default
``neighbour_bank``; k = 40, the space's default. 128x128 on a GPU only (about 2 s a slice on 2 CPU cores).

And the :class:`~patchgan_fast.Scorer` of such a model whose score weighs eq. 5 0 (the brain models at 128x128
choose it) against the same model weighing it 0.25: the first reconstructs nothing.
"""

import time

import pytest
import torch
from conftest import calls_per_round, measure

from patchgan_fast import PatchGAN, Scorer, TrainConfig, score_batch
from patchgan_fast.scoring.neighbours import patch_distances

CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="2 s a slice on a CPU: GPU only")


def _slices(n: int, size: int, device, seed: int) -> torch.Tensor:
    """Float [n, 1, size, size] in [0, 1]: a textured disc on a zero background, like a skull-stripped slice."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    inside = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2
    return ((0.3 + 0.6 * torch.rand(n, 1, size, size, generator=g)) * inside).to(device)


def _median_seconds(fn, device, rounds: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = calls_per_round(device)
    fn()
    sync()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / n)
    return sorted(times)[len(times) // 2]


@pytest.mark.parametrize("size", [64, pytest.param(128, marks=CUDA_ONLY)])
def test_patch_distances_against_eq5(benchmark, device, record, size):
    batch = 64 if device.type == "cuda" else 16
    bank, images = _slices(1000, size, device, 0), _slices(batch, size, device, 1)
    model = PatchGAN(TrainConfig(image_size=size, patch_size=size // 8, width=16, depth=4, skips=True), 1,
                     (0.5,), (0.25,)).to(device).eval()
    benchmark.group = f"patch distances {size}x{size}"
    seconds = measure(benchmark, lambda: patch_distances(images, bank, 40), device)
    if seconds is None:
        return
    with torch.inference_mode():
        eq5 = _median_seconds(lambda: score_batch(model, images), device, 5)
    config = dict(size=size, batch=batch, bank=1000, k=40)
    record("images_per_second", batch / seconds, "images/s", dict(config, what="patch distances"))
    record("images_per_second", batch / eq5, "images/s", dict(config, what="eq. 5 (score_batch, demo model shape)"))
    record("time_ratio", seconds / eq5, "x", dict(config, what="patch distances / eq. 5"))
    benchmark.extra_info["times_eq5"] = round(seconds / eq5, 2)


@pytest.mark.parametrize("size", [64, 128])  # 128x128: about 0.3 s a slice on 2 CPU cores, the brain models' size
def test_a_patches_score_without_eq5_against_with_it(benchmark, device, record, size, monkeypatch):
    batch = 64 if device.type == "cuda" else 16
    bank, images = _slices(200, size, device, 0), _slices(batch, size, device, 1)
    model = PatchGAN(TrainConfig(image_size=size, patch_size=size // 8, width=16, depth=4, skips=True), 1,
                     (0.5,), (0.25,)).to(device).eval()
    monkeypatch.setattr("patchgan_fast.models.patchgan.FOREIGN_PATCHES", 16)  # the weights are set below
    model.add_neighbours(bank, _slices(16, size, device, 2), "patches")
    scorers = {}
    for u in (0.0, 0.25):
        model.neighbour_weights = (u, 1 - u)
        scorers[u] = Scorer(model, compile="none")
    assert not scorers[0.0].reconstructs and scorers[0.25].reconstructs
    benchmark.group = f"patches score without eq. 5 {size}x{size}"
    seconds = measure(benchmark, lambda: scorers[0.0](images), device)
    if seconds is None:
        return
    with_eq5 = _median_seconds(lambda: scorers[0.25](images), device, 5)
    config = dict(size=size, batch=batch, bank=200, k=40)
    record("images_per_second", batch / seconds, "images/s", dict(config, what="Scorer, eq. 5 weighs 0"))
    record("images_per_second", batch / with_eq5, "images/s", dict(config, what="Scorer, eq. 5 weighs 0.25"))
    record("time_ratio", with_eq5 / seconds, "x", dict(config, what="eq. 5 weighs 0.25 / weighs 0"))
    benchmark.extra_info["speed_up"] = round(with_eq5 / seconds, 2)
