"""Model files of every method: :func:`load_model` reads any (the file says which method wrote it), and
:func:`train` trains the method a config names and writes its file."""

from __future__ import annotations

import dataclasses
import os
from typing import Union

import torch.distributed as dist

from ..ops import denormalize
from ..ops.reference import infilled_reference
from ..runtime import distributed
from ..scoring import Scorer, error_maps, score_batch
from .config import TrainConfig
from .patchgan import PatchGAN, read_model_file
from .sagan import KIND as SAGAN_KIND
from .sagan import SAGAN, SAGANConfig, SAGANScorer

Model = Union[PatchGAN, SAGAN]


def load_model(path: str | os.PathLike, map_location="cpu") -> Model:
    """The model in a file written by :func:`train` (or ``.save``) of any method: a :class:`PatchGAN` or a
    :class:`SAGAN`, in eval mode.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a corrupt or truncated file, another kind of file, or a newer format.
    """
    state = read_model_file(path, map_location)
    if isinstance(state, dict) and state.get("kind") == SAGAN_KIND:
        return SAGAN.from_state(state, repr(str(path)))
    return PatchGAN.from_state(state, repr(str(path)))


def train(data, config: TrainConfig | SAGANConfig, out: str | os.PathLike, *, unlabelled=None, groups=None,
          resume: bool = False) -> Model:
    """Trains the method of ``config`` (a :class:`TrainConfig`: the Patch-GAN; a :class:`SAGANConfig`: SAGAN) on
    normal images ``data`` and, when given, the ``unlabelled`` pool, and writes the model file (rank 0); the
    entry point of ``patchgan-fast train``. ``groups``: one label per image (its subject); validation holds out
    whole groups (:func:`~patchgan_fast.models.schedule.validation_split`)."""
    if isinstance(config, SAGANConfig):
        world, rank = distributed()
        if world > 1:
            raise ValueError("SAGAN trains in one process; run it without torchrun")
        model = SAGAN.fit(data, config, unlabelled=unlabelled, groups=groups, resume=resume)
    else:
        model = PatchGAN.fit(data, config, unlabelled=unlabelled, groups=groups, resume=resume)
    world, rank = distributed()
    if rank == 0:
        model.save(out)
    if world > 1:
        dist.barrier()
    return model


def error_map(model: Model, images, keys=None):
    """[B, H, W] localization maps of either method on the images' device: the Patch-GAN's
    :func:`~patchgan_fast.error_maps` (with the images' mask ``keys``), SAGAN's ``|x - G(x)| / 2``."""
    if isinstance(model, SAGAN):
        return model.maps(images).to(images.device)
    return error_maps(model, images, keys=keys)


def reconstruction(model: Model, images, keys=None):
    """What the model thinks the images should look like, ``[B, C, H, W]`` float in [0, 1] on the images'
    device: the Patch-GAN's in-filled image (each patch from the masked copy that hid it, with the images' mask
    ``keys``), SAGAN's restored G(x)."""
    if isinstance(model, SAGAN):
        return ((model.restore(images.to(next(model.parameters()).device)) + 1) / 2).clamp(0, 1).to(images.device)
    config = dataclasses.replace(model.score_config, neighbour_scales=None)  # the reconstructions only
    r = score_batch(model, images.to(next(model.parameters()).device), config, keys=keys)
    x = infilled_reference(r.reconstructions, r.assignment, patch_size=config.patch_size)
    return denormalize(x, config.mean, config.std).clamp(0, 1).to(images.device)


def make_scorer(model: Model, device=None, compile: str = "none"):
    """The batch scorer of either method: a :class:`~patchgan_fast.Scorer` or a :class:`SAGANScorer` (which has
    no compiled mode)."""
    if isinstance(model, SAGAN):
        return SAGANScorer(model, device)
    return Scorer(model, device=device, compile=compile)
