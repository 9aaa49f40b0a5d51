"""Every registered method trains and scores on a tiny dataset; unknown names list the valid ones."""

import pytest
import torch
from helpers import blobs
from sklearn.metrics import roc_auc_score

from patchgan_fast import TrainConfig
from patchgan_fast.methods import REGISTRY, get_method

CONFIG = TrainConfig(image_size=32, patch_size=8, width=8, depth=2, disc_width=8, disc_layers=2, batch_size=16,
                     lr=2e-3, steps=40, val_every=20, progress=False)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_method_trains_and_scores(name):
    method = get_method(name, CONFIG).fit(blobs(96))
    normal, abnormal = blobs(16, seed=5), blobs(16, seed=6, abnormal=True)
    scores, maps = method.score(torch.cat([normal, abnormal]))
    assert scores.shape == (32,) and torch.isfinite(scores).all()
    if maps is not None:
        assert maps.shape == (32, 32, 32)
    auroc = roc_auc_score([0] * 16 + [1] * 16, scores.numpy())
    assert auroc > (0.5 if name == "alocc" else 0.8), f"{name}: AUROC {auroc:.3f} on obvious anomalies"


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown method 'svdd'; expected one of patchgan, ae, alocc, ocsvm, threshold"):
        get_method("svdd", CONFIG)


def test_baseline_configs_are_what_they_claim():
    ae = get_method("ae", CONFIG).config
    assert (ae.layout, ae.num_copies, ae.box_count, ae.loss_weights) == ("none", 1, (0, 0), (1.0, 0.0))
    assert get_method("alocc", CONFIG).config.loss_weights == (0.2, 1.0)
