"""The fast scoring path (Scorer) against score_batch and the plain-PyTorch reference pipeline."""

import dataclasses

import pytest
import torch
from conftest import cpu_and_cuda
from helpers import random_images

from patchgan_fast import PatchGAN, ScoreConfig, Scorer, TrainConfig, score_batch
from patchgan_fast.scoring import reference_pipeline

#: Stated tolerance of the bf16 fast path against the fp32 reference: relative score error.
BF16_RTOL = 0.05


def _model(channels=3, size=32, device="cpu", seed=0):
    torch.manual_seed(seed)
    cfg = TrainConfig(image_size=size, patch_size=8, width=8, depth=2, disc_width=8, disc_layers=2, progress=False)
    model = PatchGAN(cfg, channels, mean=(0.4,) * channels, std=(0.25,) * channels).to(device).eval()
    with torch.no_grad():  # a random init reconstructs poorly but not uniformly; perturb so scores differ
        for p in model.reconstructor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("layout,k,weighted,error", [
    ("phases", 4, False, "mse"), ("random", 4, False, "mse"), ("none", 1, False, "mse"), ("phases", 9, False, "mse"),
    ("phases", 4, True, "mse"), ("random", 4, True, "mse"),
    ("phases", 4, False, "msgms"), ("random", 4, True, "msgms"), ("none", 1, False, "msgms"),
    ("phases", 4, True, "mse+msgms"), ("none", 1, False, "mse+msgms"),
])
def test_fp32_scorer_equals_score_batch_and_the_reference(layout, k, weighted, error):
    model = _model()
    weights = torch.rand(4, 4, generator=torch.Generator().manual_seed(1)) * 2 if weighted else None
    cfg = dataclasses.replace(model.score_config, layout=layout, num_copies=k, error=error, error_scales=(0.3, 0.05),
                              patch_weights=None if weights is None else weights.tolist())
    images = random_images((11, 3, 32, 32), torch.uint8, seed=3)
    keys = torch.arange(11, dtype=torch.int64) * 7919
    scorer = Scorer(model, cfg, forward_batch=2 * k)  # 2 images per forward: 6 chunks, the last one short
    scores, errors = scorer(images, keys)
    expected = score_batch(model, images, cfg, keys=keys)
    torch.testing.assert_close(scores, expected.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(errors, expected.patch_errors, rtol=1e-5, atol=1e-6)
    ref_scores, ref_errors = reference_pipeline(model, images, cfg, keys)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(errors, ref_errors, rtol=1e-5, atol=1e-6)
    if weighted:  # the weights change the ranking, not the patch errors
        plain, _ = Scorer(model, dataclasses.replace(cfg, patch_weights=None))(images, keys)
        assert not torch.allclose(scores, plain)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("error", ["msgms", "mse+msgms"])  # mse: the bound of bf16 rounding, test_cuda_paths.py
def test_bf16_scorer_is_within_the_stated_tolerance_of_the_reference(device, error):
    model = _model(device=device)
    cfg = dataclasses.replace(model.score_config, error=error)
    images = random_images((16, 3, 32, 32), torch.uint8, device=device, seed=4)
    scores, _ = Scorer(model, cfg, precision="bf16", compile="none")(images)
    ref, _ = reference_pipeline(model, images, cfg)
    torch.testing.assert_close(scores, ref, rtol=BF16_RTOL, atol=0.0)


def test_scorer_leaves_the_model_alone_and_accepts_cpu_batches():
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Scorer(model, precision="bf16")(random_images((2, 3, 32, 32), torch.uint8))
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_any_module_can_be_scored():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    scores, errors = Scorer(net, ScoreConfig(patch_size=8))(random_images((3, 1, 32, 32), torch.uint8))
    assert scores.shape == (3,) and errors.shape == (3, 4, 4)


def test_compiled_scorer_equals_eager():
    model = _model(channels=1, seed=2)
    images = random_images((5, 1, 32, 32), torch.uint8, seed=5)
    eager, _ = Scorer(model, compile="none", forward_batch=8)(images)
    scorer = Scorer(model, compile="compile", forward_batch=8)
    compiled, _ = scorer(images)  # 2 images per call: the last chunk is padded to the compiled shape
    assert scorer.compiled and scorer.fallback_reason is None
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(monkeypatch):
    model = _model(channels=1)
    images = random_images((3, 1, 32, 32), torch.uint8)

    def broken(*args, **kwargs):
        def run(x):
            raise RuntimeError("inductor exploded\nwith details")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    scorer = Scorer(model, compile="compile")
    with pytest.warns(RuntimeWarning, match="torch.compile failed, scoring eagerly \\(RuntimeError: inductor exploded\\)"):
        scores, _ = scorer(images)
    assert not scorer.compiled and scorer.fallback_reason == "RuntimeError: inductor exploded"
    torch.testing.assert_close(scores, Scorer(model, compile="none")(images)[0])


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(precision="fp64"), ValueError, "unknown precision 'fp64'; expected auto, fp32, bf16, fp16"),
    (dict(compile="jit"), ValueError, "unknown compile mode 'jit'; expected one of auto, none, compile, cudagraphs"),
    (dict(compile="cudagraphs", device="cpu"), ValueError, "compile='cudagraphs' needs a CUDA device, got cpu"),
    (dict(forward_batch=0), ValueError, "expected forward_batch a positive int, got 0"),
    (dict(config="paper"), TypeError, "expected config as a ScoreConfig, got str"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        Scorer(_model(), **kwargs)


def test_bad_batches_are_named():
    scorer = Scorer(_model())
    with pytest.raises(ValueError, match=r"expected images of shape \[B, C, H, W\], got 3-D \(3, 32, 32\)"):
        scorer(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"not divisible by patch_size 8"):
        scorer(torch.zeros(1, 3, 30, 30, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"the model must map \[N, C, H, W\] -> \[N, C, H, W\]; given \(4, 1, 32, 32\)"):
        Scorer(torch.nn.Conv2d(1, 2, 3, padding=1), ScoreConfig(patch_size=8))(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="expected the model as a torch.nn.Module, got function"):
        Scorer(lambda x: x)


@pytest.mark.cuda
def test_cuda_graph_scorer_matches_the_reference_and_takes_pinned_cpu_batches():
    model = _model(device="cuda")
    images = random_images((70, 3, 32, 32), torch.uint8, seed=6)
    scorer = Scorer(model, forward_batch=64)  # auto: bf16, channels_last, CUDA graphs; 16 images per call
    assert scorer.compile_mode == "cudagraphs" and scorer.dtype == torch.bfloat16
    for batch in (images, images.pin_memory(), images.cuda()):
        scores, _ = scorer(batch)
        ref, _ = reference_pipeline(model, images.cuda(), model.score_config)
        torch.testing.assert_close(scores, ref, rtol=BF16_RTOL, atol=0.0)
    assert scorer.compiled, scorer.fallback_reason


def test_screen_reuses_a_given_scorer_with_the_same_scores(tmp_path):
    from PIL import Image

    from patchgan_fast.app.screening import screen

    (tmp_path / "data").mkdir()
    for i, im in enumerate(random_images((5, 3, 32, 32), torch.uint8, seed=8)):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(tmp_path / "data" / f"{i}.png")
    model = _model()
    rows = []
    for name, source in (("a", model), ("b", Scorer(model, device="cpu", compile="none"))):
        screen(source, [tmp_path / "data"], tmp_path / name, device="cpu", batch_size=2, num_workers=0, top=1,
               progress=False)
        rows.append((tmp_path / name / "scores.csv").read_text())
    assert rows[0] == rows[1] and rows[0].count("\n") == 6
    model.train()
    screen(model, [tmp_path / "data"], tmp_path / "c", num_workers=0, top=0, progress=False)
    assert model.training and next(model.parameters()).device.type == "cpu"  # screen works on its own copy
    with pytest.raises(TypeError, match="screen needs a Scorer built from a PatchGAN, got one built from Conv2d"):
        screen(Scorer(torch.nn.Conv2d(3, 3, 1), ScoreConfig(patch_size=8)), [tmp_path / "data"], tmp_path / "d")


class _Interrupting(torch.nn.Module):
    """Reconstructs by a 1x1 conv; the third call raises KeyboardInterrupt (Ctrl-C during batch 3)."""

    calls = 0

    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        type(self).calls += 1
        if type(self).calls == 3:
            raise KeyboardInterrupt
        return self.conv(x)


def test_ctrl_c_keeps_the_batch_already_scored_and_resume_finishes(tmp_path):
    from PIL import Image

    from patchgan_fast.app.screening import PARTIAL, screen

    (tmp_path / "data").mkdir()
    for i, im in enumerate(random_images((7, 3, 32, 32), torch.uint8, seed=9)):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(tmp_path / "data" / f"{i}.png")
    model = _model()
    model.reconstructor = _Interrupting(3)
    _Interrupting.calls = 0
    with pytest.raises(KeyboardInterrupt):
        screen(model, [tmp_path / "data"], tmp_path / "out", batch_size=2, num_workers=0, top=0, progress=False)
    # batch 1 was read back when batch 2 was submitted; batch 2 when Ctrl-C hit batch 3
    assert (tmp_path / "out" / PARTIAL).read_text().count("\n") == 1 + 4
    summary = screen(model, [tmp_path / "data"], tmp_path / "out", resume=True, batch_size=2, num_workers=0, top=0,
                     progress=False)
    assert (summary.scored, summary.skipped) == (3, 4)
    assert (tmp_path / "out" / "scores.csv").read_text().count("\n") == 1 + 7
