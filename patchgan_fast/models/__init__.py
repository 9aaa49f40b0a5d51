"""Models: the networks, :class:`TrainConfig`, the trained :class:`PatchGAN` with its file format, training,
and SAGAN (:class:`SAGAN`, :class:`SAGANConfig`), the semi-supervised method it is compared with."""

from .config import LOSS_PRESETS, TrainConfig
from .files import load_model, train
from .networks import PatchDiscriminator, Reconstructor
from .patchgan import FORMAT_VERSION, PatchGAN
from .sagan import SAGAN, SAGANConfig

__all__ = ["Reconstructor", "PatchDiscriminator", "TrainConfig", "LOSS_PRESETS", "PatchGAN", "FORMAT_VERSION", "train",
           "load_model", "SAGAN", "SAGANConfig"]
