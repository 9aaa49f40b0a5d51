"""The full screening-throughput sweep: images/s for C in {1, 3}, K in {1, 4}, batch sizes 64-1024
from uint8 tensors on the device, the reference pipeline at one batch size, GPU memory peaks, where
the time of a batch goes (transfer, masks, model, kernel), lighter reconstructors (width 24 and 16 against
the default 32, C = 3, K = 4: images/s and the TFLOP/s they reach), and decoding from JPEG and PNG files.

    python benchmarks/sweep_pipeline.py --record h100-pipeline-sweep   # -> benchmarks/results/NAME.{md,json}
    python benchmarks/sweep_pipeline.py --quick                          # a small CPU run (CI runs it)

The model is the package default for the image size (``TrainConfig.for_image_size``), randomly
initialized. On a CPU only ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import device_name, versions, write_results  # noqa: E402
from pipeline_common import default_model, gflop_per_copy, seconds_per_call, smooth_images, write_files  # noqa: E402

from patchgan_fast import Scorer, ops  # noqa: E402
from patchgan_fast.data import DecodedFiles  # noqa: E402
from patchgan_fast.scoring import patch_scores, reference_pipeline  # noqa: E402


def _breakdown(scorer: Scorer, x_host: torch.Tensor, device, repeats: int) -> dict:
    """Seconds per batch of each stage, each timed on its own over the whole batch."""
    b = x_host.shape[0]
    pinned = x_host.pin_memory() if device.type == "cuda" else x_host
    x = pinned.to(device)
    keys = torch.zeros(b, dtype=torch.int64, device=device)
    plan, cfg = scorer.plan(x.shape), scorer.config
    n = scorer.chunk
    with torch.inference_mode():
        assignment = ops.assign_with(plan, keys)
        masked = ops.mask_with(plan, x, keys, assignment)
        chunks = [masked[:, i:i + n] for i in range(0, b, n)]
        recon = torch.cat([scorer._reconstruct(c) for c in chunks], dim=1)

        def model():
            return [scorer._reconstruct(c) for c in chunks]

        return {
            "transfer": seconds_per_call(lambda: pinned.to(device, non_blocking=True), device, repeats),
            "masks": seconds_per_call(lambda: ops.mask_with(plan, x, keys, assignment), device, repeats),
            "model": seconds_per_call(model, device, repeats),
            "kernel": seconds_per_call(
                lambda: patch_scores(plan, cfg.error, cfg.error_scales, x, recon, assignment), device, repeats),
        }


def _decode_rate(files: list[str], size: int, channels: int, workers: int) -> float:
    """Images/s of the screening decoders alone (DataLoader, ``workers`` processes)."""
    loader = torch.utils.data.DataLoader(DecodedFiles(files, size, channels, "resize"), batch_size=None, num_workers=workers)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return len(files) / (time.perf_counter() - t0)


def _lighter(size: int, b: int, compile: str, device, repeats: int, add) -> None:
    """Images/s and TFLOP/s of the default model at lighter widths (C = 3, K = 4, batch b): which one
    reaches the screening target where the default does not (README, Performance)."""
    x = smooth_images(b, 3, size, seed=b).to(device)
    for width in (24, 16):
        scorer = Scorer(default_model(size, 3, 4, device, width=width), compile=compile)
        sec = seconds_per_call(lambda: scorer(x, check_finite=False), device, repeats)
        cfg = dict(channels=3, size=size, K=4, batch=b, width=width, precision=str(scorer.dtype).replace("torch.", ""),
                   compile=scorer.compile_mode, compiled=scorer.compiled, path="fast, uint8 on the device")
        add("images_per_second", b / sec, "images/s", cfg)
        add("tflop_per_second", b / sec * 4 * gflop_per_copy(size, 3, width) / 1e3, "TFLOP/s", cfg)


def run(quick: bool, compile: str = "auto", record: str | None = None) -> list[dict]:
    """Measures every figure; prints each as it comes and, with ``record``, rewrites the results files
    after each, so a run stopped by a time limit keeps what it measured."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    size = 256 if not quick else 32
    batches = (64, 256, 1024) if not quick else (4, 16)
    repeats = 10 if gpu else 2
    command = " ".join(["python", *sys.argv])
    records = []

    def add(metric, value, unit, config):
        records.append({"metric": metric, "value": value, "unit": unit, "config": config, "device": device_name(device),
                        "versions": versions(), "command": command,
                        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        print(f"{metric:26s} {value:12.4g} {unit:9s} " + ", ".join(f"{k}={v}" for k, v in config.items()), flush=True)
        if record:
            write_results(record, records)

    for c, k in ((3, 4), (3, 1), (1, 4), (1, 1)):  # the target's setting first: a stopped run has it
        model = default_model(size, c, k, device)
        scorer = Scorer(model, compile=compile)
        base = dict(channels=c, size=size, K=k, precision=str(scorer.dtype).replace("torch.", ""),
                    compile=scorer.compile_mode)
        for b in batches:
            x_host = smooth_images(b, c, size, seed=b)
            x = x_host.to(device)
            cfg = {**base, "batch": b}
            if gpu:
                torch.cuda.reset_peak_memory_stats(device)
            sec = seconds_per_call(lambda: scorer(x, check_finite=False), device, repeats)
            cfg["compiled"] = scorer.compiled
            add("images_per_second", b / sec, "images/s", {**cfg, "path": "fast, uint8 on the device"})
            if gpu:
                add("peak_memory", torch.cuda.max_memory_allocated(device) / 2**30, "GiB", cfg)
            sec_host = seconds_per_call(lambda: scorer(x_host, check_finite=False), device, repeats)
            add("images_per_second", b / sec_host, "images/s", {**cfg, "path": "fast, uint8 in host memory"})
            if b == batches[1]:
                ref = seconds_per_call(lambda: reference_pipeline(model, x, model.score_config), device, max(2, repeats // 3))
                add("images_per_second", b / ref, "images/s", {**cfg, "path": "reference (eager fp32, K passes)"})
                add("speedup_over_reference", ref / sec, "x", cfg)
                for stage, t in _breakdown(scorer, x_host, device, repeats).items():
                    add("stage_ms_per_batch", 1000 * t, "ms", {**cfg, "stage": stage})
                if (c, k) == (3, 4):
                    add("tflop_per_second", b / sec * k * gflop_per_copy(size, c) / 1e3, "TFLOP/s",
                        {**cfg, "width": model.config.width})
        if (c, k) == (3, 4):
            _lighter(size, batches[1], compile, device, repeats, add)
    workers = min(16, os.cpu_count() or 1)
    n = 4096 if not quick else 32
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("jpg", "png"):
            files = [str(p) for p in write_files(Path(tmp) / fmt, smooth_images(n, 3, size, seed=7), fmt)]
            _decode_rate(files[: 4 * workers], size, 3, workers)  # warm the page cache and the workers' imports
            add("decode_images_per_second", _decode_rate(files, size, 3, workers), "images/s",
                {"format": fmt, "files": n, "size": size, "channels": 3, "workers": workers})
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="32x32 images, small batches (a CPU smoke run)")
    p.add_argument("--record", default=None, help="write benchmarks/results/NAME.json and NAME.md")
    p.add_argument("--compile", choices=["auto", "none", "compile", "cudagraphs"], default="auto",
                   help="the Scorer's compile mode (default auto: CUDA graphs on a GPU; each batch size compiles once)")
    a = p.parse_args(argv)
    run(a.quick, a.compile, a.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
