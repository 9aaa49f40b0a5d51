"""Reading a collection of files and folders into one uint8 batch, as ``train`` and ``evaluate`` do."""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

import torch

from ..data import DecodedFiles, list_images, read_images
from .errors import UsageError
from .records import printable


def load_collection(paths: Sequence[str], size: int, channels: Optional[int], resize: str, workers: int):
    """Reads files and folders into ``[N, C, size, size]`` uint8 (as screened); returns (images, ids, errors).
    Every file or folder that could not be read is named on stderr.

    Raises:
        UsageError: a path does not exist, or holds no supported file.
    """
    check_inputs(paths)
    problems: list[tuple[str, str]] = []
    files = sorted({f for p in paths for f in list_images(p, problems)})
    for path, why in problems:
        print(f"warning: {printable(path)}: {printable(why)}", file=sys.stderr)
    if not files:
        raise UsageError(f"no supported image files in {', '.join(map(repr, paths))}")
    if channels is None:  # the first readable file decides
        for f in files:
            try:
                channels = read_images(f)[0].pixels.shape[0]
                break
            except Exception:  # reported below, with every other unreadable file
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
        print(f"skipped {printable(error)}", file=sys.stderr)
    if not images:
        raise SystemExit("error: none of the input files could be read")
    return torch.stack(images), ids, errors


def workers(n: Optional[int]) -> int:
    return n if n is not None else min(8, os.cpu_count() or 1)


def check_inputs(paths: Sequence[str]) -> None:
    """Raises UsageError naming the first path that does not exist."""
    for p in paths:
        if not os.path.exists(p):
            raise UsageError(f"input {str(p)!r} does not exist; expected a file or a folder of images")
