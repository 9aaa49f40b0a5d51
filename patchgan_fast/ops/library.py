"""``patchgan_fast::patch_scores``: the fused patch-score kernel as a ``torch.library`` custom op (the Triton
kernel on CUDA, the pure-PyTorch reference as its CPU kernel, and a fake), so that ``torch.library.opcheck``
covers it and a whole scoring chunk can be captured in a CUDA graph or compiled with ``torch.compile``
(which keeps the op as one opaque call). Registered once, when :mod:`._backend` first imports the Triton
kernels.

Schema (the constants are device tensors from ``patchgan_fast.kernels.device_constants``)::

    patch_scores(Tensor images, Tensor reconstructions, Tensor? assignment, Tensor weights, Tensor? mean,
                 Tensor? istd, Tensor? patch_weights, int patch_size, int top_count, float rest_weight)
        -> (Tensor scores, Tensor patch_errors)
"""

from __future__ import annotations

from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from .reference import patch_scores_reference

_registered: dict[str, object] = {}


def register(kernels: ModuleType) -> None:
    """Defines the op over ``kernels`` (the imported ``patchgan_fast.kernels``); idempotent."""
    if "patch_scores" in _registered:
        return
    @torch.library.custom_op("patchgan_fast::patch_scores", mutates_args=())
    def patch_scores(images: Tensor, reconstructions: Tensor, assignment: Optional[Tensor], weights: Tensor,
                     mean: Optional[Tensor], istd: Optional[Tensor], patch_weights: Optional[Tensor], patch_size: int,
                     top_count: int, rest_weight: float) -> tuple[Tensor, Tensor]:
        return kernels.launch_patch_scores(images, reconstructions, assignment, weights, mean, istd, patch_weights,
                                           patch_size=patch_size, top_count=top_count, rest_weight=rest_weight)

    @patch_scores.register_kernel("cpu")
    def _(images, reconstructions, assignment, weights, mean, istd, patch_weights, patch_size, top_count, rest_weight):
        return patch_scores_reference(
            images, reconstructions, assignment, patch_size=patch_size, top_weights=weights[:top_count].tolist(),
            rest_weight=rest_weight, mean=None if mean is None else mean.tolist(),
            std=None if istd is None else (1.0 / istd.double()).tolist(), patch_weights=patch_weights)

    @patch_scores.register_fake
    def _(images, reconstructions, assignment, weights, mean, istd, patch_weights, patch_size, top_count, rest_weight):
        b, _, h, w = images.shape
        return (images.new_empty((b,), dtype=torch.float32),
                images.new_empty((b, h // patch_size, w // patch_size), dtype=torch.float32))

    _registered["patch_scores"] = patch_scores


def patch_scores_op(images: Tensor, reconstructions: Tensor, assignment: Optional[Tensor], constants: tuple,
                    patch_weights: Optional[Tensor], patch_size: int, top_count: int,
                    rest_weight: float) -> tuple[Tensor, Tensor]:
    """Calls ``torch.ops.patchgan_fast.patch_scores`` with ``constants = (weights, mean, istd)``."""
    weights, mean, istd = constants
    return torch.ops.patchgan_fast.patch_scores(images, reconstructions, assignment, weights, mean, istd, patch_weights,
                                                patch_size, top_count, float(rest_weight))
