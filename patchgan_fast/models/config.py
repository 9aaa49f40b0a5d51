"""Training configuration and the named presets of the Patch-GAN."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..scoring import ERRORS, RANKING_PRESETS
from ..scoring.neighbours import check_space, default_k

#: Loss weights (reconstruction, adversarial) of eq. 4. ``paper``: lambda = 0.2 on the
#: reconstruction term, as eq. 4 is written; ``reconstruction``: no adversarial term. ``default`` is
#: provisional until the benchmarks choose it by measured AUROC.
LOSS_PRESETS: dict[str, tuple[float, float]] = {
    "paper": (0.2, 1.0),
    "default": (1.0, 0.01),
    "reconstruction": (1.0, 0.0),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a Patch-GAN training run (and so the model it produces).

    Attributes:
        image_size: H = W of the training images (multiple of ``patch_size`` and ``2**depth``).
        patch_size: side of the scoring patches.
        width, depth, skips: reconstructor shape (see :class:`~patchgan_fast.models.Reconstructor`).
        disc_width, disc_layers: PatchGAN discriminator shape.
        layout, num_copies: scoring masks; training also uses them for half of each batch.
        box_count, box_size: random training rectangles (count and side ranges, pixels); None: 1-4
            boxes of image_size/16 to image_size/3.
        loss: a ``LOSS_PRESETS`` name; ``rec_weight``/``adv_weight`` override it when set.
        ranking: a ``RANKING_PRESETS`` name for scoring.
        error: the patch error measure for scoring, one of ``patchgan_fast.scoring.ERRORS`` (``mse``, eq. 2;
            ``msgms``, structural; ``mse+msgms``, both, scaled by ``PatchGAN.error_scales``);
            training's reconstruction loss is eq. 1 either way.
        position_weights: weight each patch error by how hard its position is for normal images
            before ranking (``PatchGAN.patch_weights``, from the validation images).
        neighbours: a feature space of :mod:`patchgan_fast.scoring.neighbours` (``'discriminator'``,
            ``'bottleneck'``, ``'discriminator+bottleneck'`` or ``'patches'``) to give the model a feature bank:
            after training it keeps the features of up to ``neighbour_bank`` training images (a seeded random
            choice; in ``'patches'`` the images themselves), and its image score becomes eq. 5 plus the mean
            distance to the ``neighbour_k`` nearest of them (in ``'patches'``: the largest distance of a patch to
            the nearest patch near the same place in the ``neighbour_k`` most similar of them), each in units of
            the validation images' (:meth:`PatchGAN.add_neighbours`). None: eq. 5 alone. Needs
            ``val_fraction > 0``.
        neighbour_k: None: ``neighbours.default_k`` of the space (5; 40 for ``'patches'``), at most
            ``neighbour_bank``; set when the config is made.
        unlabelled_weight: with an unlabelled pool (``PatchGAN.fit(..., unlabelled=...)``), the weight of the
            term that asks the discriminator to take the reconstructions of masked pool images for normal
            images (the discriminator learns normal images against them): SAGAN's use of a pool, on
            the Patch-GAN's masked reconstructions. Without a pool it does nothing. 0.1: of 0, 0.01, 0.1 and 1,
            the best mean separation of held-out pool images from held-out normal images (no labels) over both
            built-in data sets, within noise (experiments/results/cpu-experiment-semi-supervised-weight.md).
        steps, batch_size, lr, weight_decay, betas: AdamW schedule (batch_size per process).
        val_fraction: share of the normal images held out for model selection and score statistics.
        val_every, checkpoint_every: in steps; checkpoints need ``checkpoint_dir``.
        seed: initialization, data order and masks.
        device: 'cpu', 'cuda', 'cuda:1'...; None picks CUDA when available.
        num_workers: DataLoader workers for Dataset inputs.
        progress: show a progress bar with the losses.
    """

    image_size: int = 128
    patch_size: int = 16
    width: int = 32
    depth: int = 4
    skips: bool = False
    disc_width: int = 64
    disc_layers: int = 3
    layout: str = "phases"
    num_copies: int = 4
    box_count: tuple[int, int] = (1, 4)
    box_size: Optional[tuple[int, int]] = None
    loss: str = "default"
    rec_weight: Optional[float] = None
    adv_weight: Optional[float] = None
    ranking: str = "paper"
    error: str = "mse"
    position_weights: bool = True
    neighbours: Optional[str] = None
    neighbour_k: Optional[int] = None
    neighbour_bank: int = 1000
    unlabelled_weight: float = 0.1
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    val_fraction: float = 0.1
    val_every: int = 250
    checkpoint_every: int = 250
    checkpoint_dir: Optional[str] = None
    seed: int = 0
    device: Optional[str] = None
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.loss not in LOSS_PRESETS:
            raise ValueError(f"unknown loss preset {self.loss!r}; expected one of {', '.join(LOSS_PRESETS)}")
        if self.ranking not in RANKING_PRESETS:
            raise ValueError(f"unknown ranking preset {self.ranking!r}; expected one of {', '.join(RANKING_PRESETS)}")
        if self.error not in ERRORS:
            raise ValueError(f"unknown error {self.error!r}; expected one of {', '.join(ERRORS)}")
        if self.neighbours is not None:
            check_space(self.neighbours)
            if self.val_fraction <= 0:
                raise ValueError(f"neighbours={self.neighbours!r} needs held-out images to scale its score: "
                                 f"val_fraction > 0, got {self.val_fraction}")
        if self.neighbour_k is None:
            k = default_k(self.neighbours) if self.neighbours is not None else 5
            object.__setattr__(self, "neighbour_k", min(k, self.neighbour_bank) if isinstance(self.neighbour_bank, int) else k)
        for name in ("neighbour_k", "neighbour_bank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.neighbour_k > self.neighbour_bank:
            raise ValueError(f"neighbour_k ({self.neighbour_k}) must not exceed neighbour_bank ({self.neighbour_bank})")
        stride = 2**self.depth
        if self.image_size % self.patch_size or self.image_size % stride:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size} and of the "
                f"network stride 2**depth = {stride}"
            )
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.unlabelled_weight < float("inf"):
            raise ValueError(f"unlabelled_weight must be a finite number >= 0, got {self.unlabelled_weight!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        for name in ("box_count", "box_size", "betas"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    @classmethod
    def for_image_size(cls, size: int, **overrides) -> "TrainConfig":
        """Sensible defaults for 64, 128 and 256 pixel images (and sizes near them): patches of
        size/8, and enough stride-2 stages to bring the bottleneck to 8x8 or less."""
        patch = max(4, size // 8)
        depth = max(2, (size // 8).bit_length() - 1)  # 64 -> 3, 128 -> 4, 256 -> 5
        batch = 32 if size <= 128 else 16
        return cls(**{"image_size": size, "patch_size": patch, "depth": depth, "batch_size": batch, **overrides})

    @property
    def loss_weights(self) -> tuple[float, float]:
        rec, adv = LOSS_PRESETS[self.loss]
        return (rec if self.rec_weight is None else self.rec_weight, adv if self.adv_weight is None else self.adv_weight)

    @property
    def boxes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        size = self.box_size or (max(1, self.image_size // 16), max(1, self.image_size // 3))
        return self.box_count, size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def schedule_fields(self) -> dict:
        """The fields a resumed run must share with the run that wrote the checkpoint."""
        d = self.to_dict()
        for k in ("progress", "checkpoint_dir", "num_workers", "device", "val_every", "checkpoint_every",
                  "position_weights", "error", "neighbours", "neighbour_k", "neighbour_bank"):
            d.pop(k)
        return d
