"""Process-level helpers shared by training and screening: torch.distributed and progress bars."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def local_cuda_device() -> torch.device:
    """This process's GPU: ``cuda:LOCAL_RANK`` (torchrun starts one process per GPU).

    Raises:
        RuntimeError: LOCAL_RANK names a GPU this machine lacks (more processes per node than GPUs).
    """
    rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if rank >= count:
        raise RuntimeError(f"LOCAL_RANK is {rank} but this machine has {count} GPU(s): start at most {count} "
                           "process(es) per node (torchrun --nproc_per_node), or run on the CPU")
    return torch.device("cuda", rank)


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
