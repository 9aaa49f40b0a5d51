"""The validated plan: one object per (settings, image shape), checked once, that the ops, score_batch and
the Scorer share."""

import pytest
import torch
from helpers import random_images

from patchgan_fast import ScoreConfig, ops
from patchgan_fast.ops import Plan

X = random_images((3, 2, 16, 16), torch.uint8)


def test_a_plan_drives_the_ops_as_their_keyword_arguments_do():
    keys = torch.arange(3)
    plan = Plan.build(X.shape, patch_size=4, layout="random", num_copies=4, seed=7, mean=(0.4, 0.5), std=(0.2, 0.3),
                      fill=-1.0, top_weights=(2.0, 1.0), rest_weight=0.5)
    assert plan.grid == (4, 4) and plan.channels == 2 and plan.size == (16, 16)
    masked = ops.mask_with(plan, X, keys)
    assert torch.equal(masked, ops.mask_images(X, keys, layout="random", patch_size=4, num_copies=4, seed=7,
                                               mean=(0.4, 0.5), std=(0.2, 0.3), fill=-1.0))
    assignment = ops.assign_with(plan, keys)
    assert torch.equal(assignment, ops.patch_assignment(keys, (4, 4), layout="random", num_copies=4, seed=7))
    recon = torch.rand(4, 3, 2, 16, 16)
    got = ops.scores_with(plan, X, recon, assignment)
    want = ops.patch_scores(X, recon, assignment, patch_size=4, top_weights=(2.0, 1.0), rest_weight=0.5,
                            mean=(0.4, 0.5), std=(0.2, 0.3))
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_one_plan_a_config_and_shape_with_the_configs_patch_weights():
    weights = tuple(tuple(float(i * 4 + j) for j in range(4)) for i in range(4))
    config = ScoreConfig(patch_size=4, patch_weights=weights, mean=(0.5, 0.5), std=(0.25, 0.25), channels_last=True)
    plan = config.plan(X.shape, torch.device("cpu"), torch.bfloat16)
    assert plan.dtype == torch.bfloat16 and plan.memory_format == torch.channels_last
    assert plan.top_weights == config.top_weights and plan.rest_weight == config.rest_weight
    assert torch.equal(plan.patch_weights, torch.tensor(weights))
    assert ops.assign_with(Plan.build((1, 16, 16), patch_size=4, layout="none", num_copies=1), torch.arange(1)) is None


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(patch_size=5), r"image size 16x16 is not divisible by patch_size 5"),
        (dict(patch_size=4, top_weights=(1.0,) * 17), r"17 top weights given but 16x16 images have only 16 patches of 4x4"),
        (dict(patch_size=4, mean=(0.5,), std=(0.2,)), r"one value per channel \(2\), got 1 and 1"),
        (dict(patch_size=4, mean=(float("nan"), 0.5), std=(0.2, 0.2)), r"expected finite mean"),
        (dict(patch_size=4, fill=float("nan")), r"expected a finite fill value, got nan"),
        (dict(patch_size=4, patch_weights=torch.ones(3, 3)), r"expected patch_weights of shape \(4, 4\)"),
        (dict(patch_size=4, layout="phases", num_copies=3), r"needs a square num_copies"),
    ],
)
def test_a_plan_refuses_what_the_ops_refuse_naming_it(settings, message):
    with pytest.raises(ValueError, match=message):
        Plan.build(X.shape, **settings)
