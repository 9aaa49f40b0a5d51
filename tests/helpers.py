"""Shared helpers of the test suite."""

import torch

from patchgan_fast import _backend


def has_cuda_ops() -> bool:
    ext = _backend.extension()
    return ext is not None and ext.build_info()["cuda"]


def random_images(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)
    return torch.rand(shape, generator=g).to(dtype=dtype, device=device)
