"""Models: the networks, :class:`TrainConfig`, the trained :class:`PatchGAN` with its file format, and training."""

from .config import LOSS_PRESETS, TrainConfig
from .networks import PatchDiscriminator, Reconstructor
from .patchgan import FORMAT_VERSION, PatchGAN, train

__all__ = ["Reconstructor", "PatchDiscriminator", "TrainConfig", "LOSS_PRESETS", "PatchGAN", "FORMAT_VERSION", "train"]
