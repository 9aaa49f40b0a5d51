"""Process-level helpers every layer may use: the package version, torch.distributed, progress bars,
atomic file writes and the SIGTERM handler that stops a run as Ctrl-C does."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

__version__ = "0.1.0"


def local_cuda_device() -> torch.device:
    """This process's GPU: ``cuda:LOCAL_RANK`` (torchrun starts one process per GPU), made the current device,
    so that whatever launches on the current device (NCCL, Triton, CUDA graphs) uses it too.

    Raises:
        RuntimeError: LOCAL_RANK names a GPU this machine lacks (more processes per node than GPUs).
    """
    rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if rank >= count:
        raise RuntimeError(f"LOCAL_RANK is {rank} but this machine has {count} GPU(s): start at most {count} "
                           "process(es) per node (torchrun --nproc_per_node), or run on the CPU")
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    return device


def distributed() -> tuple[int, int]:
    """(world size, rank); initializes the process group under torchrun (NCCL on GPU, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def progress_bar(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True):
    """A tqdm bar on stderr (sparse updates when stderr is not a terminal), or None."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                mininterval=1.0 if sys.stderr.isatty() else 15.0)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def interrupt(signum, frame) -> None:
    """A signal handler (for SIGTERM: ``timeout``, batch schedulers, a process pool's terminate) that stops the
    run as Ctrl-C does: KeyboardInterrupt, so that what catches it keeps finished work and checkpoints."""
    raise KeyboardInterrupt(f"stopped by signal {signum}")
