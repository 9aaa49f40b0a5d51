"""Reading a collection of files and folders into one uint8 batch, as ``train`` and ``evaluate`` do."""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

import torch

from ..data import DecodedFiles, ReadError, list_images, read_images


def load_collection(paths: Sequence[str], size: int, channels: Optional[int], resize: str, workers: int):
    """Reads files and folders into ``[N, C, size, size]`` uint8 (as screened); returns (images, ids, errors)."""
    files = sorted({f for p in paths for f in list_images(p)})
    if not files:
        raise SystemExit(f"error: no supported image files in {', '.join(paths)}")
    if channels is None:  # the first readable file decides
        for f in files:
            try:
                channels = read_images(f)[0].pixels.shape[0]
                break
            except ReadError:
                continue
        else:
            raise SystemExit("error: none of the input files could be read")
    loader = torch.utils.data.DataLoader(DecodedFiles(files, size, channels, resize), batch_size=None, num_workers=workers)
    images, ids, errors = [], [], []
    for path, items, error in loader:
        if error is not None:
            errors.append((path, error))
            continue
        for s, pixels, _ in items:
            images.append(pixels)
            ids.append((path, s))
    for _, error in errors:
        print(f"skipped {error}", file=sys.stderr)
    if not images:
        raise SystemExit("error: none of the input files could be read")
    return torch.stack(images), ids, errors


def workers(n: Optional[int]) -> int:
    return n if n is not None else min(8, os.cpu_count() or 1)
