"""What the screening-throughput benchmarks share: the default model, synthetic image files, timing."""

import time
from pathlib import Path

import numpy as np
import torch

from patchgan_fast import PatchGAN, TrainConfig


def default_model(size: int, channels: int, num_copies: int, device, seed: int = 0, error: str = "mse",
                  **overrides) -> PatchGAN:
    """The package's default configuration for ``size`` (``TrainConfig.for_image_size``; ``overrides`` change
    fields, e.g. ``width``), randomly initialized: throughput does not depend on what the weights learned."""
    layout = "phases" if num_copies > 1 else "none"
    cfg = TrainConfig.for_image_size(size, layout=layout, num_copies=num_copies, seed=seed, progress=False, error=error,
                                     **overrides)
    torch.manual_seed(seed)
    return PatchGAN(cfg, channels, mean=(0.45,) * channels, std=(0.25,) * channels).to(device).eval()


def gflop_per_copy(size: int, channels: int, width: int | None = None) -> float:
    """Forward GFLOP of the default ``size`` model's reconstructor (at ``width``) for one masked copy."""
    from torch.utils.flop_counter import FlopCounterMode

    from patchgan_fast.models.networks import Reconstructor

    cfg = TrainConfig.for_image_size(size, **({} if width is None else {"width": width}))
    net = Reconstructor(channels, width=cfg.width, depth=cfg.depth, skips=cfg.skips)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, channels, size, size))
    return counter.get_total_flops() / 1e9


def smooth_images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 [n, C, S, S] images with smooth structure and noise (compress like photographs, not
    like white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, max(2, size // 32), max(2, size // 32), generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.03 * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def write_files(folder: Path, images: torch.Tensor, fmt: str) -> list[Path]:
    """Writes each image as ``fmt`` ('jpg' at quality 90, or 'png'); returns the paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        a = im.permute(1, 2, 0).numpy()
        pil = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        path = folder / f"{i:06d}.{fmt}"
        pil.save(path, quality=90) if fmt == "jpg" else pil.save(path)
        paths.append(path)
    return paths


def seconds_per_call(fn, device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, synchronizing the device around each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
