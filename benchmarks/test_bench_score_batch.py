"""score_batch end to end (masks -> model -> patch scores), images/s, fast path vs reference path.

The model is a small stand-in convolutional reconstructor; the trained Patch-GAN models and the
full pipeline benchmarks belong to the models and throughput work.
"""

import pytest
import torch
from cases import CASES, IDS
from conftest import measure
from torch import nn

from patchgan_fast import ScoreConfig, score_batch


def _model(c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, c, 3, padding=1),
    )


@pytest.mark.parametrize("path", ["reference", "auto"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_score_batch(benchmark, device, record, monkeypatch, case, path):
    name, b, c, s, p, k, dtype = case
    monkeypatch.setenv("PATCHGAN_FAST_BACKEND", path)
    model = _model(c).to(device=device, dtype=dtype)
    cfg = ScoreConfig(patch_size=p, layout="phases" if k > 1 else "none", num_copies=k, dtype=dtype)
    x = torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8, device=device)
    benchmark.group = f"score_batch {name}"
    seconds = measure(benchmark, lambda: score_batch(model, x, cfg), device)
    if seconds is None:
        return
    benchmark.extra_info["images_per_s"] = round(b / seconds, 1)
    record("images_per_second", b / seconds, "images/s", dict(case=name, path=path, model="3-conv stand-in"))
