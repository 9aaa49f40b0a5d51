"""Networks of the Patch-GAN (plain modules)."""

from .networks import PatchDiscriminator, Reconstructor

__all__ = ["Reconstructor", "PatchDiscriminator"]
