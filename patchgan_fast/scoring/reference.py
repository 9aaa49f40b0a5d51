"""The baseline the fast scoring path is measured and checked against."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import normalize, rank_patch_errors
from ..ops.reference import patch_assignment_reference
from .gms import gms_errors


def reference_pipeline(model, images: Tensor, config, keys: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Scoring as a careful researcher writes it in plain eager fp32 PyTorch: masks built in Python,
    one forward pass per copy, unfold-and-sort scoring (``error='msgms'``: of the structural error map
    of the in-filled image; ``'mse+msgms'``: of both, scaled by ``error_scales`` and summed). The baseline the fast pipeline is measured
    and checked against (``benchmarks/test_bench_pipeline.py``, ``tests/test_pipeline.py``).

    Args:
        model: fp32 module ``[N, C, H, W] -> [N, C, H, W]`` (a PatchGAN runs its reconstructor).
        images (Tensor[B, C, H, W]): uint8 or float in [0, 1], on the model's device.
        config: a :class:`~patchgan_fast.ScoreConfig` (layout ``'phases'``, ``'random'`` or ``'none'``).
        keys (Tensor[B] int64, optional): mask keys; default zeros.

    Returns:
        (scores [B], patch_errors [B, Gh, Gw]) float32.
    """
    x = normalize(images, config.mean, config.std)
    b, c, h, w = x.shape
    p, k = config.patch_size, config.num_copies
    gh, gw = h // p, w // p
    if config.layout == "phases":
        s = int(round(k**0.5))
        gy, gx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        assignment = ((gy % s) * s + gx % s).expand(b, gh, gw).to(x.device)
    elif config.layout == "random":
        keys = torch.zeros(b, dtype=torch.int64, device=x.device) if keys is None else keys
        assignment = patch_assignment_reference(keys, (gh, gw), "random", k, config.seed).long()
    else:
        assignment = torch.zeros(b, gh, gw, dtype=torch.long, device=x.device)
    pixel_copy = assignment.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]  # [B, 1, H, W]
    errors = torch.zeros(b, gh * gw, device=x.device)
    infilled = torch.zeros_like(x) if config.error != "mse" else None  # only the structural error needs it
    with torch.no_grad():
        for copy in range(k):
            hidden = pixel_copy == copy if config.layout != "none" else torch.zeros_like(pixel_copy, dtype=torch.bool)
            recon = model(torch.where(hidden, torch.full_like(x, config.fill), x))
            per_patch = F.unfold((x - recon) ** 2, kernel_size=p, stride=p).view(b, c * p * p, gh * gw).mean(1)
            errors += torch.where(assignment.flatten(1) == copy, per_patch, torch.zeros_like(per_patch))
            if infilled is not None:
                infilled = torch.where(pixel_copy == copy, recon, infilled)
    if infilled is not None:
        pixels = gms_errors(images, infilled, mean=config.mean, std=config.std)[:, None]
        structural = F.unfold(pixels, kernel_size=p, stride=p).mean(1)
        if config.error == "msgms":
            errors = structural
        else:  # mse+msgms
            scale_mse, scale_msgms = config.error_scales or (1.0, 1.0)
            errors = errors / scale_mse + structural / scale_msgms
    errors = errors.view(b, gh, gw)
    scores = rank_patch_errors(errors, top_weights=config.top_weights, rest_weight=config.rest_weight,
                               patch_weights=config.patch_weights_tensor((gh, gw), x.device))
    return scores, errors
