import os

import pytest
import torch

# Without a GPU, the Triton kernel runs in Triton's interpreter; it must be set before triton.jit runs, so the
# kernels are jitted here, once, whatever a test sets later.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        import patchgan_fast.kernels  # noqa: F401
    except ImportError:  # no triton: the backend falls back to the reference, and test_backend says so
        pass

#: The modules whose subject is the scoring path: on a CPU they score with the Triton kernel in the interpreter,
#: cross-checked against the pure-PyTorch reference. The interpreter takes seconds per call, so the other modules
#: (training, the benchmark, the CLI, ...) score with the reference, as a CPU install does (TRITON_INTERPRET=0).
KERNEL_MODULES = {"test_backend", "test_cuda_paths", "test_errors", "test_gms", "test_masks", "test_patch_scores",
                  "test_pipeline", "test_plan", "test_score_batch"}


@pytest.fixture(autouse=True)
def _cpu_scores_backend(request):
    with pytest.MonkeyPatch.context() as mp:  # its own: a test's monkeypatch.undo() leaves it in place
        if not torch.cuda.is_available() and request.module.__name__.rpartition(".")[2] not in KERNEL_MODULES:
            mp.setenv("TRITON_INTERPRET", "0")
        yield


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
