"""Multi-scale gradient-magnitude similarity (MSGMS), the structural error measure of RIAD
(Zavrtanik et al., 2021): a pixel is abnormal where the edges of the in-filled image differ from the
image's, whatever their brightness. ``ScoreConfig.error = 'msgms'`` scores patches with it.

Per scale s = 1, 1/2, 1/4, 1/8 (mean pooling): Prewitt gradient magnitudes g, g' of the image and of
its reconstruction (channel means, intensities in [0, 1]), ``GMS = (2 g g' + c) / (g² + g'² + c)``
with c = 0.0026, and the error ``1 - GMS`` upsampled bilinearly to full size; the map is the mean
over scales, in [0, 1]. PyTorch convolutions on one channel: cheap beside the reconstructor.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import denormalize, to_unit

#: RIAD's stabilizing constant, for intensities in [0, 1].
GMS_CONSTANT = 0.0026


def _gradient_magnitude(x: Tensor) -> Tensor:
    k = torch.tensor([[1.0, 0.0, -1.0]] * 3, device=x.device) / 3
    weight = torch.stack([k, k.T])[:, None]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight).square().sum(1, keepdim=True).sqrt()


def gms_errors(
    images: Tensor,
    infilled: Tensor,
    *,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    scales: int = 4,
) -> Tensor:
    """MSGMS error map ``[B, H, W]`` float32 in [0, 1] (module docstring).

    Args:
        images (Tensor[B, C, H, W]): uint8, or float in [0, 1].
        infilled (Tensor[B, C, H, W]): the reconstruction, normalized with ``mean``/``std`` as the
            model's inputs are (:func:`~patchgan_fast.scoring.errors.pixel_errors` takes each pixel from the copy that hid it).
        scales: how many scales (1: full resolution only).
    """
    if scales < 1:
        raise ValueError(f"expected scales >= 1, got {scales}")
    a = to_unit(images).mean(1, keepdim=True)
    b = denormalize(infilled, mean, std).mean(1, keepdim=True)
    size = a.shape[-2:]
    out = torch.zeros_like(a)
    for level in range(scales):
        if level:
            a, b = F.avg_pool2d(a, 2, ceil_mode=True), F.avg_pool2d(b, 2, ceil_mode=True)
        ga, gb = _gradient_magnitude(a), _gradient_magnitude(b)
        err = 1 - (2 * ga * gb + GMS_CONSTANT) / (ga.square() + gb.square() + GMS_CONSTANT)
        out += err if level == 0 else F.interpolate(err, size=size, mode="bilinear", align_corners=False)
    return (out / scales)[:, 0]
