"""The trained Patch-GAN: reconstructor + discriminator + config + normalization, and its file format."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from ..runtime import __version__, atomic_save
from ..scoring import RANKING_PRESETS, ScoreConfig, score_batch, score_statistics
from ..scoring.neighbours import (DESCRIPTIONS, Embedding, background, bank_images, bank_k, changed_pixels,
                                  check_space, choose_map_window, choose_outline, choose_weights, combine, describe,
                                  distances, foreign_patches, leave_outline, patch_distance_maps, patch_geometry,
                                  peak_window, peaks)
from . import training
from .config import TrainConfig
from .networks import PatchDiscriminator, Reconstructor

FORMAT_VERSION = 2  # 2: feature bank and neighbour scales (files of format 1 have neither)
KIND = "patchgan_fast.PatchGAN"
#: At least this many foreign-patch anomalies weigh a bank's two terms (one per held-out image where there are more).
FOREIGN_PATCHES = 128


class PatchGAN(nn.Module):
    """A Patch-GAN novelty detector. Calling it runs the reconstructor, so it can be passed to
    :func:`~patchgan_fast.score_batch` directly; ``score_config`` tells how it scores.

    Attributes:
        config: the :class:`TrainConfig` it was trained with.
        reconstructor, discriminator: the networks.
        mean, std: per-channel normalization of its inputs (from the training images).
        score_stats: statistics of the scores of the normal validation images (mean, std, p50,
            p95, p99), for normalizing and thresholding scores; empty before training.
        patch_weights: per-position weights of the patch errors before ranking (Gh rows of Gw
            floats), from the mean patch error of the normal validation images at each position:
            ``1.1 m / (m_pos + 0.1 m)``, so positions where normal images are hard to reconstruct
            count less; None without validation images. Used when ``config.position_weights`` is on.
        error_scales: the standard deviations (mse, msgms) of the normal validation images' scores
            under each error measure (unweighted patch errors, the config's ranking), the divisors of
            ``error='mse+msgms'``; None without validation images.
        feature_bank: Tensor[N, D] float32, the unit-length features (``config.neighbours``'s space) of N
            normal training images (in the ``patches`` space the images themselves, [N, C, H, W] uint8),
            or None (see :meth:`add_neighbours`); a buffer, so it moves with the model.
        neighbour_scales: (mean, std) of the validation images' eq. 5 scores, then of their mean distances
            to the bank: the units in which the two scores are summed; None without a bank.
        neighbour_weights: what eq. 5 and the distance, each in those units, are multiplied by before they are
            summed, chosen on the validation images (:func:`~patchgan_fast.scoring.neighbours.choose_weights`);
            (1, 1) without a bank (and in files written before they were chosen).
        patch_outline: with a ``patches`` bank, the pixels of the foreground's outline its maps leave out, chosen
            on the validation images (:func:`~patchgan_fast.scoring.neighbours.choose_outline`); None otherwise
            (and in files written before it was chosen: ``patch_geometry``'s).
        patch_description: with a ``patches`` bank, how the bank images searched for a query are found
            (:data:`~patchgan_fast.scoring.neighbours.DESCRIPTIONS`): ``'ranks'`` (``'pixels'`` in files written
            before ranks); None otherwise.
        patch_window: with a ``patches`` bank, the side of the window whose largest mean of an image's map is its
            distance (:func:`~patchgan_fast.scoring.neighbours.peak_window` of the image size; 3 in files written
            before it grew with the size); None otherwise.
        map_window: with a ``patches`` bank, the window of the mean that fills its distance maps in the error maps
            (:func:`~patchgan_fast.error_maps`, :func:`~patchgan_fast.scoring.neighbours.filled`), chosen on the
            validation images (:func:`~patchgan_fast.scoring.neighbours.choose_map_window`); 1 (the maps as they
            are) otherwise and in files written before it was chosen. The image score does not use it.
        trained_on: how many images trained it, ``{"normal": n, "unlabelled": m}`` (m > 0: the semi-supervised
            setting); zeros before training.
    """

    method = "patchgan"

    def __init__(self, config: TrainConfig, channels: int, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.config = config
        self.channels = channels
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.reconstructor = Reconstructor(channels, config.width, config.depth, skips=config.skips)
        self.discriminator = PatchDiscriminator(channels, config.disc_width, config.disc_layers)
        self.score_stats: dict[str, float] = {}
        self.patch_weights: Optional[tuple[tuple[float, ...], ...]] = None
        self.error_scales: Optional[tuple[float, float]] = None
        self.register_buffer("feature_bank", None, persistent=False)
        self.neighbour_scales: Optional[tuple[float, float, float, float]] = None
        self.neighbour_weights: tuple[float, float] = (1.0, 1.0)
        self.patch_outline: Optional[int] = None
        self.patch_description: Optional[str] = None
        self.patch_window: Optional[int] = None
        self.map_window = 1
        self.trained_on = {"normal": 0, "unlabelled": 0}
        # channels_last: faster convolutions on GPUs and on CPUs alike (oneDNN: scoring 1.6-2x faster on 2 cores)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstructor(x)

    @property
    def score_config(self) -> ScoreConfig:
        top, rest = RANKING_PRESETS[self.config.ranking]
        return ScoreConfig(
            patch_size=self.config.patch_size, error=self.config.error, error_scales=self.error_scales,
            layout=self.config.layout, num_copies=self.config.num_copies,
            seed=self.config.seed % 2**32, top_weights=top, rest_weight=rest, mean=self.mean, std=self.std,
            patch_weights=self.patch_weights if self.config.position_weights else None,
            channels_last=True,
            neighbour_scales=self.neighbour_scales if self.feature_bank is not None else None,
            neighbour_weights=self.neighbour_weights,
        )

    def normalize(self, scores: Tensor) -> Tensor:
        """Scores in units of the normal validation scores: ``(s - mean) / std``; about 0 for normal
        images, and comparable across models.

        Raises:
            RuntimeError: the model has no validation statistics (trained with ``val_fraction=0``).
        """
        if not self.score_stats or not self.score_stats.get("std"):
            raise RuntimeError("this model has no validation score statistics; train it with val_fraction > 0")
        return (scores - self.score_stats["mean"]) / self.score_stats["std"]

    def add_neighbours(self, images: Tensor, held_out: Tensor, features: str = "discriminator",
                       k: Optional[int] = None, batch: int = 256) -> "PatchGAN":
        """Gives the model a feature bank, so that it scores with eq. 5 plus a nearest-neighbour score: the
        mean Euclidean distance from an image's features to those of its ``k`` nearest bank images (in the
        ``patches`` space: the largest distance of a patch of the image to the nearest patch near the same place
        in its ``k`` most similar bank images), each score in units of the held-out images' scores, weighted and
        summed (:mod:`patchgan_fast.scoring.neighbours`). The weights are chosen on the held-out images alone: the
        share of eq. 5 whose sum best tells them from foreign-patch anomalies made of them
        (:func:`~patchgan_fast.scoring.neighbours.choose_weights`); with ``patches`` so are the outline its maps leave
        out and the window that fills its error maps (``patch_outline``, ``map_window``). Sets ``feature_bank``,
        ``neighbour_scales``, ``neighbour_weights``, ``config.neighbours``/``neighbour_k`` and ``score_stats`` (now
        those of the summed score); replaces an earlier bank. ``fit`` calls it when ``TrainConfig.neighbours`` is
        set; a model trained without one can be given one afterwards.

        Args:
            images (Tensor[N, C, H, W]): normal images for the bank (uint8, or float in [0, 1]); the
                training images, or a share of them.
            held_out (Tensor[M, C, H, W]): other normal images (the validation images), for the units.
            features: one of ``neighbours.FEATURE_SPACES``.
            k: neighbours per image, 1 .. N; None: ``neighbours.default_k(features)`` (5; 40 for ``patches``).
                In ``patches`` a larger k means the whole bank (``config.neighbour_k`` becomes N).
            batch: images per network call.

        Raises:
            ValueError: unknown ``features``, ``k`` outside 1 .. N, fewer than 2 held-out images, or held-out
                scores without spread.
        """
        check_space(features)
        k = bank_k(features, k, len(images))
        for name, x in (("images", images), ("held_out", held_out)):
            if not isinstance(x, Tensor) or x.dim() != 4:
                raise TypeError(f"expected {name} as a Tensor [N, C, H, W], got "
                                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(images):
            raise ValueError(f"expected k in 1..{len(images)} (the bank images), got {k!r}")
        if len(held_out) < 2:
            raise ValueError(f"expected at least 2 held-out images to scale the scores, got {len(held_out)}")
        self.feature_bank, self.neighbour_scales = None, None  # eq. 5 alone while the units are measured
        config = dataclasses.replace(self.config, neighbours=features, neighbour_k=k)
        device = next(self.parameters()).device
        foreign = foreign_patches(held_out, max(len(held_out), FOREIGN_PATCHES), seed=self.config.seed)

        def eq5(x: Tensor) -> Tensor:
            return torch.cat([score_batch(self, x[i:i + batch].to(device)).scores.cpu()
                              for i in range(0, len(x), batch)])

        plain, plain_foreign = eq5(held_out), eq5(foreign)
        bank, held = self._embed(images, features, batch), self._embed(held_out, features, batch)
        held_foreign = self._embed(foreign, features, batch)
        outline = description = window = None
        map_window = 1
        if features == "patches":
            size = min(held.shape[-2:])
            bank, description, window = bank_images(bank), DESCRIPTIONS[0], peak_window(size)
            described = describe(bank, description)
            maps = patch_distance_maps(held, bank, k, outline=0, description=description, bank_description=described)
            outline = choose_outline(maps, held, most=patch_geometry(size)[1])
            near = peaks(leave_outline(maps, held, outline), window).cpu()
            maps = patch_distance_maps(held_foreign, bank, k, outline, description=description,
                                       bank_description=described).cpu()
            near_foreign = peaks(maps, window)
            map_window = choose_map_window(maps, changed_pixels(foreign, held_out), ~background(foreign))
        else:
            near, near_foreign = distances(held, bank, k).cpu(), distances(held_foreign, bank, k).cpu()
        scales = (float(plain.mean()), float(plain.std()), float(near.mean()), float(near.std()))
        if not all(math.isfinite(v) for v in scales) or scales[1] <= 0 or scales[3] <= 0:
            raise ValueError(f"the held-out images' scores and distances have no spread (mean, std of each: {scales}); "
                             "give more, or more varied, held-out images")
        weights = choose_weights(plain, near, plain_foreign, near_foreign)
        self.config, self.feature_bank, self.neighbour_scales, self.patch_outline = config, bank, scales, outline
        self.neighbour_weights, self.patch_description, self.patch_window = weights, description, window
        self.map_window = map_window
        self.score_stats = score_statistics(combine(plain, near, scales, weights))
        return self

    def neighbour_distances(self, images: Tensor, batch: int = 256) -> Tensor:
        """Tensor[B] float32: the mean distance from each image's features to its ``config.neighbour_k``
        nearest in the feature bank (in the ``patches`` space its largest patch distance), on the model's device.

        Raises:
            RuntimeError: the model has no feature bank.
        """
        if self.feature_bank is None:
            raise RuntimeError("this model has no feature bank; train it with TrainConfig(neighbours=...) "
                               "or call add_neighbours")
        patches = self.config.neighbours == "patches"
        return distances(self._embed(images, self.config.neighbours, batch), self.feature_bank, self.config.neighbour_k,
                         self.patch_outline, self.patch_description or DESCRIPTIONS[0],
                         self.bank_description() if patches else None, self.patch_window)

    def patch_distance_maps(self, images: Tensor, batch: int = 256) -> Tensor:
        """Tensor[B, H, W] float32 on the model's device: each pixel's patch distance to the model's ``patches``
        bank (:func:`patchgan_fast.scoring.neighbours.patch_distance_maps`), whose largest mean over
        ``patch_window`` x ``patch_window`` pixels is the image's distance (:meth:`neighbour_distances`).

        Raises:
            RuntimeError: the model has no feature bank of the ``patches`` space.
        """
        if self.feature_bank is None or self.config.neighbours != "patches":
            raise RuntimeError(f"this model has no bank of patches (its feature bank: "
                               f"{self.config.neighbours if self.feature_bank is not None else 'none'}); train it with "
                               "TrainConfig(neighbours='patches') or call add_neighbours(..., 'patches')")
        return patch_distance_maps(self._embed(images, "patches", batch), self.feature_bank, self.config.neighbour_k,
                                   self.patch_outline, description=self.patch_description or DESCRIPTIONS[0],
                                   bank_description=self.bank_description())

    def bank_description(self) -> Tensor:
        """Tensor[M, D]: :func:`~patchgan_fast.scoring.neighbours.describe` of the ``patches`` bank, by which the
        bank images searched for each query are found; described once per bank (again when the bank is replaced
        or moves to another device)."""
        description = self.patch_description or DESCRIPTIONS[0]
        kept = self.__dict__.get("_bank_described")  # (the bank described, how, its description)
        if kept is None or kept[0] is not self.feature_bank or kept[1] != description:
            kept = (self.feature_bank, description, describe(self.feature_bank, description))
            self.__dict__["_bank_described"] = kept
        return kept[2]

    def _embed(self, images: Tensor, features: str, batch: int) -> Tensor:
        """[N, D] unit-length features of ``images`` (any device) on the model's device ([N, C, H, W] images
        in [0, 1] in the ``patches`` space)."""
        ops.check_images(images)
        device = next(self.parameters()).device
        net, was_training = Embedding(self, features), self.training
        self.eval()
        try:
            with torch.inference_mode():
                feats = [net(ops.normalize(images[i:i + batch].to(device), self.mean, self.std))
                         for i in range(0, len(images), batch)]
        finally:
            self.train(was_training)
        return torch.cat(feats)

    @classmethod
    def fit(cls, data, config: Optional[TrainConfig] = None, *, unlabelled=None, groups=None,
            resume: bool = False) -> "PatchGAN":
        """Trains on normal images, and on an unlabelled pool when one is given (the semi-supervised setting);
        ``groups`` (one label per image, e.g. its subject) holds out whole groups for validation; see
        :func:`patchgan_fast.models.training.fit`."""
        return training.fit(cls, data, config or TrainConfig(), unlabelled=unlabelled, groups=groups, resume=resume)

    # ------------------------------------------------------------------------- files

    def state(self) -> dict:
        """Everything the model file holds (tensors and plain values only)."""
        return {
            "kind": KIND, "method": self.method, "format_version": FORMAT_VERSION, "package_version": __version__,
            "trained_on": dict(self.trained_on),
            "config": self.config.to_dict(), "channels": self.channels, "mean": list(self.mean), "std": list(self.std),
            "score_stats": dict(self.score_stats),
            "patch_weights": None if self.patch_weights is None else [list(r) for r in self.patch_weights],
            "error_scales": None if self.error_scales is None else list(self.error_scales),
            "feature_bank": None if self.feature_bank is None else self.feature_bank.detach().cpu(),
            "neighbour_scales": None if self.neighbour_scales is None else list(self.neighbour_scales),
            "neighbour_weights": list(self.neighbour_weights),
            "patch_outline": self.patch_outline,
            "patch_description": self.patch_description,
            "patch_window": self.patch_window,
            "map_window": self.map_window,
            "reconstructor": {k: v.detach().cpu() for k, v in self.reconstructor.state_dict().items()},
            "discriminator": {k: v.detach().cpu() for k, v in self.discriminator.state_dict().items()},
        }

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model file atomically (a temporary file in the same folder, then a rename)."""
        atomic_save(self.state(), path)

    @classmethod
    def from_state(cls, state: dict, source: str = "state") -> "PatchGAN":
        if not isinstance(state, dict) or state.get("kind") != KIND:
            raise ValueError(f"{source} is not a patchgan_fast model file (no '{KIND}' header)")
        version = state.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{source} has model format {version!r}, expected a positive int: the file is damaged or "
                             "was not written by patchgan_fast")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source} has model format {version!r}, written by patchgan_fast {state.get('package_version')}; "
                f"this version ({__version__}) reads formats up to {FORMAT_VERSION}: upgrade patchgan_fast"
            )
        missing = [k for k in ("config", "channels", "mean", "std", "reconstructor", "discriminator") if k not in state]
        if missing:
            raise ValueError(f"{source} lacks {', '.join(map(repr, missing))}: the file is damaged or incomplete")
        try:
            model = cls(TrainConfig.from_dict(state["config"]), state["channels"], state["mean"], state["std"])
            model.reconstructor.load_state_dict(state["reconstructor"])
            model.discriminator.load_state_dict(state["discriminator"])
            model.score_stats = dict(state.get("score_stats") or {})
            model.trained_on = dict(state.get("trained_on") or model.trained_on)  # absent before 0.1.0's SAGAN
            weights = state.get("patch_weights")
            model.patch_weights = None if weights is None else tuple(tuple(float(v) for v in r) for r in weights)
            scales = state.get("error_scales")  # absent in files written before 'mse+msgms'
            model.error_scales = None if scales is None else tuple(float(v) for v in scales)
            if state.get("feature_bank") is not None:  # format 2
                bank = state["feature_bank"]  # a patches bank is uint8 (float32 in older files)
                model.feature_bank = bank if bank.dtype == torch.uint8 else bank.float()
                model.neighbour_scales = tuple(float(v) for v in state["neighbour_scales"])
                # absent in files written before they were chosen: those summed both terms as they are
                model.neighbour_weights = tuple(float(v) for v in state.get("neighbour_weights") or (1.0, 1.0))
                outline = state.get("patch_outline")  # absent in files written before it was chosen
                model.patch_outline = None if outline is None else int(outline)
                if model.config.neighbours == "patches":  # absent in files written before ranks: pixels
                    model.patch_description = state.get("patch_description") or "pixels"
                    if model.patch_description not in DESCRIPTIONS:
                        raise ValueError(f"patch_description {model.patch_description!r} is not one of {DESCRIPTIONS}")
                    window = state.get("patch_window", 3)  # absent in files written before it grew with the size
                    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
                        raise ValueError(f"patch_window {window!r} is not a positive odd int")
                    model.patch_window = window
                    window = state.get("map_window", 1)  # absent in files written before it was chosen
                    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
                        raise ValueError(f"map_window {window!r} is not a positive odd int")
                    model.map_window = window
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{source} holds a damaged model ({type(exc).__name__}: {reason})") from exc
        return model.eval()

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "PatchGAN":
        """Loads a model file with ``torch.load(weights_only=True)`` (no pickled code runs).

        Raises:
            FileNotFoundError: no such file.
            ValueError: a corrupt or truncated file, another kind of file, or a newer format.
        """
        return cls.from_state(read_model_file(path, map_location), repr(str(path)))


def read_model_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A model file's contents, read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable torch file (corrupt, truncated, or another kind of file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip, unpickling and I/O errors all mean: not a model file we can read
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{str(path)!r} is not a readable patchgan_fast model file (corrupt, truncated, or another kind of "
            f"file): {reason}"
        ) from exc
