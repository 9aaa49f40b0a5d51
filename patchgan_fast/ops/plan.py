"""The validated plan of a masks-and-scores pass: settings x image shape, checked once.

The public ops build one per call from their keyword arguments; ``score_batch`` and the ``Scorer``
build one from a ``ScoreConfig`` and the images' shape and reuse it for every chunk, calling the
unchecked ``mask_with``/``assign_with``/``scores_with`` of :mod:`patchgan_fast.ops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import checks


@dataclass(frozen=True)
class Plan:
    """Everything the ops need to mask and score images of one shape; build it with :meth:`build`.

    Attributes:
        channels, size: C and (H, W) of the images.
        grid: (Gh, Gw), the patches per column and per row.
        patch_size, layout, num_copies, seed: the masks (see :func:`~patchgan_fast.ops.build_masks`).
        box_count, box_size: the rectangles of layout ``'boxes'``.
        mean, std: per-channel normalization, or None; fill: the value of hidden pixels.
        dtype, memory_format: of the masked copies (what the model consumes).
        top_weights, rest_weight: the ranking of eq. 5.
        patch_weights: Tensor[Gh, Gw] float32 on the device, or None.
    """

    channels: int
    size: tuple[int, int]
    grid: tuple[int, int]
    patch_size: int
    layout: str = "phases"
    num_copies: int = 4
    seed: int = 0
    box_count: tuple[int, int] = (1, 4)
    box_size: tuple[int, int] = (8, 32)
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    fill: float = 0.0
    dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format
    top_weights: tuple[float, ...] = ()
    rest_weight: float = 1.0
    patch_weights: Optional[Tensor] = field(default=None, compare=False)

    @classmethod
    def build(
        cls,
        shape: Sequence[int],
        *,
        patch_size: int,
        layout: str = "phases",
        num_copies: int = 4,
        seed: int = 0,
        box_count: Sequence[int] = (1, 4),
        box_size: Sequence[int] = (8, 32),
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        fill: float = 0.0,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format = torch.contiguous_format,
        top_weights: Sequence[float] = (),
        rest_weight: float = 1.0,
        patch_weights: Optional[Tensor] = None,
        device: Optional[torch.device] = None,
    ) -> "Plan":
        """Checks every setting against images of ``shape`` ([B, C, H, W] or [C, H, W]).

        Raises:
            ValueError, TypeError: naming the setting, what it was and what was expected.
        """
        c, h, w = (int(v) for v in tuple(shape)[-3:])
        grid = checks.check_patch_grid((h, w), patch_size)
        checks.check_seed(seed)
        checks.check_layout(layout, num_copies, patch_size, (h, w))
        if layout == "boxes":
            checks.check_boxes(box_count, box_size, (h, w))
        checks.check_normalization(mean, std, c)
        if fill != fill or abs(fill) == float("inf"):
            raise ValueError(f"expected a finite fill value, got {fill!r}")
        checks.check_model_dtype(dtype, memory_format)
        checks.check_ranking(top_weights, rest_weight, grid, patch_size)
        if patch_weights is not None:
            checks.check_patch_weights(patch_weights, grid, patch_size, patch_weights.device if device is None
                                       else torch.device(device))
        return cls(
            channels=c, size=(h, w), grid=grid, patch_size=patch_size, layout=layout, num_copies=num_copies,
            seed=seed, box_count=tuple(box_count), box_size=tuple(box_size),
            mean=None if mean is None else tuple(float(v) for v in mean),
            std=None if std is None else tuple(float(v) for v in std), fill=float(fill), dtype=dtype,
            memory_format=memory_format, top_weights=tuple(float(v) for v in top_weights),
            rest_weight=float(rest_weight), patch_weights=None if patch_weights is None else patch_weights.contiguous(),
        )
