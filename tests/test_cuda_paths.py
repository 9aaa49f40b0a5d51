"""The paths production takes on a GPU, as tests: the one-program-per-image ranking with many images and
patch rows, large patches and grids, long top-weight lists, half-precision and channels_last inputs, empty
batches, a non-current device, the bf16 end-to-end score within a bound derived from bf16 rounding, and
fp32 CPU-vs-CUDA agreement. Marked ``cuda`` tests are skipped without a GPU; the bf16 bound also runs on
the CPU."""

import dataclasses

import pytest
import torch
from conftest import cpu_and_cuda
from helpers import SMALL, blobs, random_images

from patchgan_fast import PatchGAN, Scorer, TrainConfig, ops, score_batch
from patchgan_fast.ops import reference as R
from patchgan_fast.scoring import reference_pipeline

cuda = pytest.mark.cuda


def _close(got, ref, atol=1e-6, rtol=2e-5):
    torch.testing.assert_close(got.double().cpu(), ref.double().cpu(), atol=atol, rtol=rtol)


def _case(b, c, h, w, p, k, r_dtype, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    r = torch.rand((k * b, c, h, w), generator=g).to(r_dtype)
    if channels_last:
        r = r.contiguous(memory_format=torch.channels_last)
    r = r.view(k, b, c, h, w)
    a = None
    if k > 1:
        a = ops.patch_assignment(torch.arange(b), (h // p, w // p), layout="random", num_copies=k, seed=seed)
    return x.cuda(), r.cuda(), None if a is None else a.cuda()


# (B, C, H, W, P, K, T, recon dtype, channels_last): what each exercises
CUDA_CASES = [
    (None, 1, 64, 64, 8, 4, 2, torch.bfloat16, False),  # B = 2 x SMs + 3: one program per image, fused ranking
    (None, 3, 128, 128, 16, 4, 16, torch.bfloat16, True),  # P = 16, T = 16 (sort), channels_last 3 channels
    (4, 3, 256, 256, 32, 4, 2, torch.bfloat16, True),  # P = 32 on 256 x 256, the benchmark's shape
    (4, 1, 256, 256, 64, 4, 4, torch.float16, False),  # P = 64
    (2, 1, 1024, 1024, 16, 4, 16, torch.bfloat16, False),  # a 64 x 64 patch grid (4,096 rows of patches)
    (3, 1, 256, 256, 4, 1, 8, torch.float32, False),  # G = 4,096 patches of 4, K = 1
    (2, 3, 64, 64, 8, 9, 16, torch.float16, True),  # K = 9, fp16, channels_last
]


@cuda
@pytest.mark.parametrize("b,c,h,w,p,k,t,r_dtype,cl", CUDA_CASES)
def test_cuda_kernel_on_production_shapes(b, c, h, w, p, k, t, r_dtype, cl):
    if b is None:
        b = 2 * torch.cuda.get_device_properties(0).multi_processor_count + 3
    x, r, a = _case(b, c, h, w, p, k, r_dtype, cl)
    kw = dict(patch_size=p, top_weights=tuple(1.0 + 0.1 * i for i in range(t)), rest_weight=0.5,
              mean=(0.4,) * c, std=(0.25,) * c)
    scores, errors = ops.patch_scores(x, r if k > 1 else r[0], a, **kw)
    ref_s, ref_e = R.patch_scores_reference(x, r, a, dtype=torch.float64, **kw)
    _close(errors, ref_e)
    _close(scores, ref_s)


@cuda
def test_cuda_empty_batches_are_refused_before_any_launch():
    x, r, a = _case(2, 1, 32, 32, 8, 4, torch.bfloat16)
    with pytest.raises(ValueError, match="expected a non-empty batch of images"):
        ops.patch_scores(x[:0], r[:, :0], a[:0], patch_size=8)
    with pytest.raises(ValueError, match="expected a non-empty batch"):
        ops.mask_images(x[:0], patch_size=8)
    with pytest.raises(ValueError, match="expected a non-empty batch"):
        ops.build_masks(torch.zeros(0, dtype=torch.int64, device="cuda"), (32, 32), patch_size=8)


@cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs to score on the one that is not current")
def test_every_cuda_path_works_on_a_non_current_device():
    model = PatchGAN(TrainConfig(**{**SMALL, "device": None}), 1, (0.4,), (0.25,)).eval()
    images = random_images((6, 1, 32, 32), torch.uint8, seed=2)
    ref = Scorer(model, device="cpu", compile="none")(images)[0]
    torch.cuda.set_device(0)
    dev = torch.device("cuda", 1)
    got = Scorer(model.to(dev), device=dev, precision="fp32", compile="none")(images)[0]
    _close(got, ref, atol=1e-4, rtol=1e-4)
    x, r, a = (t.to(dev) for t in _case(3, 1, 32, 32, 8, 4, torch.float32))
    s, _ = ops.patch_scores(x, r, a, patch_size=8)
    assert s.device == dev
    m = ops.mask_images(x, torch.arange(3, device=dev), patch_size=8)
    assert m.device == dev and torch.cuda.current_device() == 0


@pytest.fixture(scope="module")
def trained():
    return PatchGAN.fit(blobs(64), TrainConfig(steps=30, val_every=30, **SMALL))


def _rounding_bound(model, images, cfg, layers_rounded):
    """How far bf16 scores may be from fp32 ones: each of the reconstructor's ``layers_rounded`` rounding stages
    perturbs a value by at most one unit roundoff 2**-8 of its magnitude (first order), so a reconstructed
    value r moves by at most delta = layers_rounded * 2**-8 * |r| and a patch's mean squared error by at most
    mean(2 |x - r| delta + delta**2); the ranked score moves by at most the sum of the weights' magnitudes
    times the largest such patch change."""
    result = score_batch(model, images, cfg)
    x = ops.normalize(images, cfg.mean, cfg.std)
    r = R.infilled_reference(result.reconstructions.float(), result.assignment, patch_size=cfg.patch_size)
    delta = layers_rounded * 2.0**-8 * r.abs()
    change = (2 * (x - r).abs() * delta + delta**2).mean(1)
    per_patch = torch.nn.functional.avg_pool2d(change[:, None], cfg.patch_size)[:, 0].flatten(1).amax(1)
    g = per_patch.new_tensor((images.shape[-2] // cfg.patch_size) * (images.shape[-1] // cfg.patch_size))
    weight = sum(abs(w) for w in cfg.top_weights) + abs(cfg.rest_weight) * g
    return result.scores, weight * per_patch


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_bf16_scores_stay_within_the_bound_of_bf16_rounding(trained, device):
    model = trained.to(device)
    cfg = dataclasses.replace(model.score_config, patch_weights=None)  # the bound's weights are the ranking's
    images = blobs(24, seed=11, abnormal=False).to(device)
    layers = sum(isinstance(m, torch.nn.Conv2d) for m in model.reconstructor.modules()) + 2  # + input, output
    fp32, bound = _rounding_bound(model, images, cfg, layers)
    bf16, _ = Scorer(model, cfg, precision="bf16", compile="none")(images)
    assert ((bf16 - fp32).abs() <= bound).all(), (bf16 - fp32).abs() / bound
    assert (bound < 0.5 * fp32).all()  # a bound that says something: under half of every score


@cuda
@pytest.mark.parametrize("error", ["mse", "msgms"])
def test_fp32_scores_agree_between_cpu_and_cuda(trained, error):
    """The same model and images, fp32, eager: CUDA convolutions (no TF32) and the compiled kernels agree with
    the CPU up to float rounding."""
    allow = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cfg = dataclasses.replace(trained.score_config, error=error)
        images = torch.cat([blobs(8, seed=3), blobs(8, seed=4, abnormal=True)])
        cpu, cpu_e = Scorer(trained.cpu(), cfg, device="cpu", compile="none")(images)
        gpu, gpu_e = Scorer(trained.cuda(), cfg, device="cuda", precision="fp32", compile="none")(images)
        _close(gpu, cpu, atol=1e-5, rtol=1e-4)
        _close(gpu_e, cpu_e, atol=1e-5, rtol=1e-4)
        ref, _ = reference_pipeline(trained.cpu(), images, cfg)
        _close(cpu, ref, atol=1e-5, rtol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allow
