"""Novelty-detection methods behind one interface, resolved by name: the Patch-GAN and the baselines
it is compared with (paper Table 1; f-AnoGAN and the deep perceptual AE live in ``baselines``).

Every method has ``fit(normal_images)`` (``fit(normal_images, unlabelled=pool)`` for those that can learn from
an unlabelled pool, :func:`uses_pool`) and ``score(images) -> (scores [B], maps [B, H, W] or None)``
with images ``[N, C, H, W]`` uint8 or float in [0, 1]; higher scores are more abnormal, and a map
(where the method has one) localizes the abnormality for pixel metrics. Hyperparameters are fixed
here or chosen on normal data only, never on test labels. Methods that train take ``fit(..., checkpoint_dir=...)``:
their training then checkpoints there and continues from a checkpoint it finds there.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..models import SAGAN, PatchGAN, SAGANConfig, TrainConfig
from ..models.schedule import bank_choice, validation_split
from ..models.training import validation_statistics
from ..ops import to_unit
from ..scoring import Scorer, score_batch
from ..scoring.batch import maps_and_scores
from ..scoring.neighbours import combine, peaks
from .baselines import AnoGANMethod, FAnoGANMethod, PerceptualAEMethod


def _batched(fn, images: Tensor, batch: int = 256):
    outs = [fn(images[i:i + batch]) for i in range(0, len(images), batch)]
    scores = torch.cat([s for s, _ in outs])
    maps = None if outs[0][1] is None else torch.cat([m for _, m in outs])
    return scores, maps


#: A config's feature-bank fields as for a model without one (the AE, ALOCC): their settings say nothing of a bank.
_NO_BANK = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in ("neighbours", "neighbour_k",
                                                                                     "neighbour_bank")}


class PatchGANMethod:
    """The Patch-GAN: masked reconstruction, ranked patch errors (eq. 5)."""

    name = "patchgan"

    def __init__(self, config: TrainConfig):
        self.config = config
        self.model: Optional[PatchGAN] = None
        # fit's held-out and training images (a Tensor input's), for multi-scale and nearest-neighbour scoring
        self.held_out: Optional[Tensor] = None
        self.trained_on: Optional[Tensor] = None

    def fit(self, images: Tensor, unlabelled: Optional[Tensor] = None, groups: Optional[Sequence] = None,
            checkpoint_dir: Optional[str] = None) -> "PatchGANMethod":
        """Trains on normal ``images`` and, when given, the ``unlabelled`` pool (``TrainConfig.unlabelled_weight``);
        ``groups`` (one label per image, e.g. its subject) holds out whole groups for validation. With a
        ``checkpoint_dir`` the training checkpoints there and continues from the checkpoint it finds there."""
        config = self.config if checkpoint_dir is None else dataclasses.replace(self.config, checkpoint_dir=checkpoint_dir)
        self.model = PatchGAN.fit(images, config, unlabelled=unlabelled, groups=groups, resume=checkpoint_dir is not None)
        if isinstance(images, Tensor):
            val, train = validation_split(len(images), self.config, groups)
            self.held_out, self.trained_on = images[val], images[train]
        return self

    def _device(self):
        return next(self.model.parameters()).device

    def score(self, images: Tensor, ranking: Optional[str] = None, position_weights: bool = True, maps: bool = True,
              error: Optional[str] = None, neighbours: bool = True):
        """Scores (eq. 5, plus the nearest-neighbour term of a model with a feature bank) from the fast scorer;
        maps: :func:`~patchgan_fast.error_maps` (pixel errors in the copy that hid each pixel, smoothed), finer
        than the patch grid, or None with ``maps=False``. ``ranking`` and ``error`` override the model's;
        ``position_weights=False`` scores without its patch weights (which were made for the model's own error
        measure: pass it with ``error``); ``neighbours=False`` scores with eq. 5 alone. Any override scores with
        eq. 5 alone: the units of the nearest-neighbour sum were measured for the model's own eq. 5."""
        cfg = self.model.score_config if ranking is None else self.model.score_config.with_ranking(ranking)
        if not position_weights:
            cfg = dataclasses.replace(cfg, patch_weights=None)
        if error is not None:
            cfg = dataclasses.replace(cfg, error=error)
        if not neighbours or (ranking, position_weights, error) != (None, True, None):
            cfg = dataclasses.replace(cfg, neighbour_scales=None)
        dev = self._device()
        if not maps:
            scorer = Scorer(self.model, cfg, compile="none")
            return _batched(lambda x: (scorer(x.to(dev))[0].cpu(), None), images)
        # the maps' reconstructions give the scores of eq. 5 too, and a patches bank's maps both its distances and
        # its part of the error maps: each computed once
        patches = cfg.neighbour_scales is not None and self.model.config.neighbours == "patches"

        def one(x):
            x = x.to(dev)
            near = self.model.patch_distance_maps(x) if patches else None
            m, s = maps_and_scores(self.model, x, cfg, patch_maps=near, scores=cfg.neighbour_weights[0] != 0)
            if cfg.neighbour_scales is not None:  # (eq. 5's scores are None where it weighs 0: not reconstructed)
                distances = peaks(near, self.model.patch_window) if patches else self.model.neighbour_distances(x)
                s = combine(s, distances, cfg.neighbour_scales, cfg.neighbour_weights)
            return s.cpu(), m.cpu()

        return _batched(one, images)

    def score_multiscale(self, images: Tensor, patch_sizes: Sequence[int]) -> Tensor:
        """Multi-scale scoring (after RIAD's masks of several cell sizes): the same model scores
        ``images`` with the masks and patches of each size in ``patch_sizes`` (its own layout and K),
        each size's scores in units of its held-out normal images' scores (position weights and
        statistics recomputed from them), summed over the sizes; eq. 5 alone, without a feature bank's term.

        Raises:
            RuntimeError: fewer than 2 held-out images (``val_fraction=0``, a tiny training set, or a
                Dataset rather than a Tensor given to ``fit``).
        """
        self._check_held_out("multi-scale scoring")
        total = 0
        for p in patch_sizes:
            probe = self.model  # its own size: the statistics training computed from these images
            if int(p) != self.model.config.patch_size or self.model.feature_bank is not None:
                probe = copy.copy(self.model)  # shares the networks; its own config and statistics (of eq. 5)
                probe.config = dataclasses.replace(self.model.config, patch_size=int(p))
                validation_statistics(probe, self.held_out, self._device(), 256)
            scorer = Scorer(probe, dataclasses.replace(probe.score_config, neighbour_scales=None), compile="none")
            scores = _batched(lambda x: (scorer(x.to(self._device()))[0].cpu(), None), images)[0]
            total = total + probe.normalize(scores)
        return total

    def score_neighbours(self, images: Tensor, k: Optional[int] = None, features: str = "discriminator") -> Tensor:
        """The model's score plus a nearest-neighbour score of its features, each in units of the held-out
        normal images' scores, weighted and summed: what the model would score had it been trained with
        ``TrainConfig(neighbours=features, neighbour_k=k)`` (the same bank of ``config.neighbour_bank``
        training images; :meth:`PatchGAN.add_neighbours` on a copy, the model itself is not changed).

        Args:
            k: None: the space's default (``neighbours.default_k``).
            features: one of ``patchgan_fast.scoring.neighbours.FEATURE_SPACES``: ``'discriminator'`` (the output of its last
                stride-2 stage), ``'bottleneck'`` (the reconstructor's, of the whole unmasked image), both, or
                ``'patches'`` (the pixels, place by place).

        Raises:
            RuntimeError: fewer than 2 held-out images (see :meth:`score_multiscale`).
            ValueError: ``k`` not in 1 .. the number of bank images, or unknown ``features``.
        """
        self._check_held_out("nearest-neighbour scoring")
        bank = self.trained_on[bank_choice(len(self.trained_on), self.config)]
        probe = copy.deepcopy(self.model).add_neighbours(bank, self.held_out, features, k)
        scorer = Scorer(probe, probe.score_config, compile="none")
        return _batched(lambda x: (scorer(x.to(self._device()))[0].cpu(), None), images)[0]

    def _check_held_out(self, what: str) -> None:
        if self.held_out is None or len(self.held_out) < 2:
            raise RuntimeError(f"{what} needs at least 2 held-out normal images, got "
                               f"{0 if self.held_out is None else len(self.held_out)}: fit on a Tensor with val_fraction > 0")


class AutoencoderMethod(PatchGANMethod):
    """Plain convolutional autoencoder: no masks, no adversarial term, whole-image error."""

    name = "ae"

    def __init__(self, config: TrainConfig):
        super().__init__(dataclasses.replace(config, layout="none", num_copies=1, box_count=(0, 0), loss="reconstruction",
                                             rec_weight=None, adv_weight=None, skips=False, ranking="none",
                                             position_weights=False, error="mse", **_NO_BANK))

    def fit(self, images: Tensor, groups: Optional[Sequence] = None, checkpoint_dir: Optional[str] = None
            ) -> "AutoencoderMethod":  # no adversarial term: nothing to learn from a pool
        return super().fit(images, groups=groups, checkpoint_dir=checkpoint_dir)


class ALOCCMethod(PatchGANMethod):
    """ALOCC (Sabokrou et al.): adversarially trained reconstructor R and discriminator D; the score is
    how fake D finds the reconstruction, -mean(D(R(x))) over D's patch logits."""

    name = "alocc"

    def __init__(self, config: TrainConfig):
        super().__init__(dataclasses.replace(config, layout="none", num_copies=1, loss="paper", rec_weight=None,
                                             adv_weight=None, skips=False, **_NO_BANK))

    def fit(self, images: Tensor, groups: Optional[Sequence] = None, checkpoint_dir: Optional[str] = None
            ) -> "ALOCCMethod":  # one-class, as published
        return super().fit(images, groups=groups, checkpoint_dir=checkpoint_dir)

    def score(self, images: Tensor, ranking: Optional[str] = None):
        m = self.model
        dev = self._device()

        def one(x):
            masked = score_batch(m, x.to(dev), m.score_config).reconstructions[0]
            with torch.inference_mode():
                logits = m.discriminator(masked.float())
            return -logits.flatten(1).mean(1).cpu(), None

        return _batched(one, images)


class SAGANMethod:
    """SAGAN (Zhang et al., MICCAI 2024; :mod:`patchgan_fast.models.sagan`): learns from the labelled normals and,
    when given, an unlabelled pool; one-class, the normals stand in for the pool. The benchmark's image size,
    steps (iterations), batch size, seed and widths (``config.width`` for both networks; the paper's is 64);
    SAGAN's own optimizer (Adam 5e-5, n_critic 2) and loss weights. ``test_dropout``: score with the official
    code's test-time pixel dropout; :meth:`score_variants` gives those scores beside the honest ones."""

    name = "sagan"

    def __init__(self, config: TrainConfig, **overrides):
        self.config = SAGANConfig(image_size=config.image_size, width=config.width, critic_width=config.width,
                                  steps=config.steps, batch_size=config.batch_size, seed=config.seed,
                                  device=config.device, val_fraction=config.val_fraction,
                                  val_every=max(1, config.steps // 10), progress=False, **overrides)

    def fit(self, images: Tensor, unlabelled: Optional[Tensor] = None, groups: Optional[Sequence] = None,
            checkpoint_dir: Optional[str] = None) -> "SAGANMethod":
        """``checkpoint_dir``: as :meth:`PatchGANMethod.fit`'s."""
        config = self.config if checkpoint_dir is None else dataclasses.replace(self.config, checkpoint_dir=checkpoint_dir)
        self.model = SAGAN.fit(images, config, unlabelled=unlabelled, groups=groups, resume=checkpoint_dir is not None)
        return self

    def score(self, images: Tensor, ranking: Optional[str] = None):
        return self.model.score(images)

    def score_variants(self, images: Tensor) -> dict[str, Tensor]:
        """The other way to score: with the test-time pixel dropout the official code leaves on (or off, when
        this model scores with it)."""
        faithful = not self.config.test_dropout
        probe = copy.copy(self.model)
        probe.config = dataclasses.replace(self.config, test_dropout=faithful)
        return {f"test-time pixel dropout {'on (as the official code)' if faithful else 'off'}": probe.score(images)[0]}


class OCSVMMethod:
    """One-class SVM on raw pixels in [-1, 1] (scikit-learn; nu = 0.1, gamma = 'scale', fixed)."""

    name = "ocsvm"

    def __init__(self, config: TrainConfig, nu: float = 0.1, max_train: int = 6000):
        self.nu, self.max_train, self.seed = nu, max_train, config.seed

    def fit(self, images: Tensor) -> "OCSVMMethod":
        from sklearn.svm import OneClassSVM

        x = to_unit(images).flatten(1) * 2 - 1
        if len(x) > self.max_train:
            g = torch.Generator().manual_seed(self.seed)
            x = x[torch.randperm(len(x), generator=g)[: self.max_train]]
        self.svm = OneClassSVM(nu=self.nu, gamma="scale").fit(x.numpy())
        return self

    def score(self, images: Tensor, ranking: Optional[str] = None):
        x = (to_unit(images).flatten(1) * 2 - 1).numpy()
        return torch.from_numpy(-self.svm.decision_function(x).astype(np.float32)), None


class ThresholdMethod:
    """Intensity threshold: the share of pixels outside the [0.5, 99.5] percentile range of the normal
    training images' nonzero intensities (the classic baseline for bright or dark lesions)."""

    name = "threshold"

    def __init__(self, config: TrainConfig, lo: float = 0.5, hi: float = 99.5):
        self.lo, self.hi = lo, hi

    def fit(self, images: Tensor) -> "ThresholdMethod":
        x = to_unit(images)
        nz = x[x > 0.02]
        sample = nz[torch.randperm(len(nz), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        self.range = torch.quantile(sample, torch.tensor([self.lo / 100, self.hi / 100])).tolist()
        return self

    def score(self, images: Tensor, ranking: Optional[str] = None):
        x = to_unit(images).mean(1)
        lo, hi = self.range
        tissue = x > 0.02
        outside = ((x < lo) | (x > hi)) & tissue
        dist = torch.where(outside, torch.maximum(lo - x, x - hi), torch.zeros_like(x))
        return outside.flatten(1).float().mean(1), dist


REGISTRY = {cls.name: cls for cls in (PatchGANMethod, AutoencoderMethod, ALOCCMethod, FAnoGANMethod,
                                      PerceptualAEMethod, OCSVMMethod, ThresholdMethod, AnoGANMethod, SAGANMethod)}


def uses_pool(method) -> bool:
    """Whether a method (class or instance) can learn from an unlabelled pool: its ``fit`` takes ``unlabelled``."""
    return "unlabelled" in inspect.signature(method.fit).parameters


def get_method(name: str, config: TrainConfig, **options):
    """A method by its registry name, set up with ``config`` (image size, steps, seed, device...)
    and method-specific ``options`` (e.g. ``perceptual=`` for ``perceptual_ae``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(REGISTRY)}")
    return REGISTRY[name](config, **options)
