"""Screening throughput: images/s of the fast pipeline (Scorer, screen) with the package's default
model, against the plain eager fp32 reference pipeline timed in the same test.

    pytest benchmarks/test_bench_pipeline.py --benchmark-only --record h100-pipeline

The full sweep (batch sizes 64-1024, stage breakdown, memory peaks) is ``benchmarks/sweep_pipeline.py``.
"""

import os

import pytest
import torch
from pipeline_common import default_model, seconds_per_call, smooth_images, write_files

from patchgan_fast import Scorer
from patchgan_fast.app.screening import screen
from patchgan_fast.data import DecodedFiles
from patchgan_fast.scoring import reference_pipeline

# (name, C, H=W, K, B, error): the squared error runs the fused Triton kernel; the structural error (msgms)
# gathers the in-filled image and computes its maps with PyTorch convolutions, unfused
GPU_CASES = [("c3-256-k4-b256", 3, 256, 4, 256, "mse"), ("c3-256-k1-b256", 3, 256, 1, 256, "mse"),
             ("c1-256-k4-b256", 1, 256, 4, 256, "mse"), ("c1-256-k4-b256-msgms", 1, 256, 4, 256, "msgms")]
CPU_CASES = [("c3-32-k4-b8", 3, 32, 4, 8, "mse"), ("c1-32-k1-b8", 1, 32, 1, 8, "mse"),
             ("c1-32-k4-b8-msgms", 1, 32, 4, 8, "msgms")]
CASES = GPU_CASES if torch.cuda.is_available() else CPU_CASES


def _timed(benchmark, fn, device, rounds):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run():
        fn()
        sync()

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=2)
    return None if benchmark.stats is None else benchmark.stats.stats.median


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pipeline_from_device_tensors(benchmark, device, record, case):
    name, c, s, k, b, error = case
    model = default_model(s, c, k, device, error=error)
    x = smooth_images(b, c, s).to(device)
    scorer = Scorer(model)
    scores, _ = scorer(x)
    ref_scores, _ = reference_pipeline(model, x, model.score_config)
    torch.testing.assert_close(scores, ref_scores, rtol=0.05, atol=0.0)  # the fast path computes the same thing
    benchmark.group = f"pipeline {name}"
    fast = _timed(benchmark, lambda: scorer(x, check_finite=False), device, rounds=10 if device.type == "cuda" else 3)
    if fast is None:
        return
    ref = seconds_per_call(lambda: reference_pipeline(model, x, model.score_config), device, repeats=3)
    benchmark.extra_info.update(images_per_s=round(b / fast, 1), reference_images_per_s=round(b / ref, 1),
                                speedup=round(ref / fast, 2), compiled=scorer.compiled)
    config = dict(case=name, model=f"default {s}px", error=error, precision=str(scorer.dtype), compile=scorer.compile_mode,
                  compiled=scorer.compiled)
    record("images_per_second", b / fast, "images/s", {**config, "path": "fast, uint8 on the device"})
    record("images_per_second", b / ref, "images/s", {**config, "path": "reference (eager fp32, K passes, unfold+sort)"})
    record("speedup_over_reference", ref / fast, "x", config)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_screen_from_files(benchmark, device, record, tmp_path, fmt):
    """`screen` from files on local disk (decoding in one worker per core) and the decode limit of those
    workers alone."""
    gpu = device.type == "cuda"
    n, c, s, k = (4096, 3, 256, 4) if gpu else (24, 3, 32, 4)
    scorer = Scorer(default_model(s, c, k, device))  # compiled once, reused by every round
    write_files(tmp_path / "data", smooth_images(n, c, s, seed=1), fmt)
    workers = min(16, os.cpu_count() or 1)
    batch = 256 if gpu else 8
    runs = iter(range(1000))

    def screen_once():
        screen(scorer, [tmp_path / "data"], tmp_path / f"out{next(runs)}", batch_size=batch, num_workers=workers, top=0,
               progress=False)

    benchmark.group = f"screen from {fmt} files"
    seconds = _timed(benchmark, screen_once, device, rounds=3)
    if seconds is None:
        return
    files = sorted(str(p) for p in (tmp_path / "data").iterdir())

    def decode_only():
        loader = torch.utils.data.DataLoader(DecodedFiles(files, s, c, "resize"), batch_size=None, num_workers=workers)
        for _ in loader:
            pass

    decode = seconds_per_call(decode_only, device, repeats=2, warmup=0)
    config = dict(format=fmt, files=n, size=s, channels=c, K=k, workers=workers, batch=batch, model=f"default {s}px",
                  compile=scorer.compile_mode, compiled=scorer.compiled)
    benchmark.extra_info.update(images_per_s=round(n / seconds, 1), decode_limit_images_per_s=round(n / decode, 1))
    record("images_per_second", n / seconds, "images/s", {**config, "path": "screen (files -> ranked CSV)"})
    record("decode_limit", n / decode, "images/s", {**config, "path": "decoding workers alone"})


def test_sweep_script_quick(capsys):
    """The full-sweep script runs (a small CPU version; the GPU sweep is run by hand, see its docstring)."""
    import sweep_pipeline

    if torch.cuda.is_available():
        pytest.skip("the GPU sweep takes minutes: run benchmarks/sweep_pipeline.py directly")
    assert sweep_pipeline.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for metric in ("images_per_second", "speedup_over_reference", "stage_ms_per_batch", "decode_images_per_second"):
        assert metric in out
