import os

import pytest
import torch

# Without a GPU, the Triton kernel runs in Triton's interpreter; it must be set before triton.jit runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def kernel_device() -> str:
    """Where the Triton kernel's own tests run: on CUDA tensors on a GPU machine (compiled), on CPU tensors in
    Triton's interpreter without one. Never compiled kernels on CPU tensors."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_and_cuda():
    """Device parameters: 'cpu', and 'cuda' marked so that it is skipped without a GPU."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.cuda))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
