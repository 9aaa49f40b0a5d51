"""SAGAN (Zhang et al., MICCAI 2024): semi-supervised novelty detection from a few labelled normal images and
a larger unlabelled pool that mixes normal and abnormal ones. A port of the official code
(github.com/zzr728/SAGAN, described in ``shared/papers/notes-SAGAN-and-AnoGAN.md``):

* one residual generator ``G(x) = tanh(x + delta)``, run on the 2 x 2 grid of half-size patches of an image
  (row-major, each with a 3-bit position code concatenated at three encoder depths), with attention-gated
  skips and a multi-level fusion of the decoder's outputs (:class:`SAGANGenerator`);
* a WGAN-GP critic on whole images (:class:`SAGANCritic`): real = labelled normals, fake = restored
  unlabelled images;
* pseudo-anomalies made from the labelled normals by foreign-patch blending (:func:`pseudo_anomalies`);
* generator loss ``-D(G(x_u)) + |x_n - G(x_n)| + (x_n - G(x~))^2`` (weights 1/1/1), critic loss with
  penalty 10, 2 critic steps per generator step, Adam 5e-5 (0.5, 0.999), a constant learning rate;
* score: the mean of ``|x - G(x)| / 2`` (intensities in [0, 1] units); map: ``|x - G(x)| / 2``.

The notes' traps, handled: the networks have no running statistics, so eval mode scores as the networks
were trained (instance statistics); the generator's pixel dropout (5 % of the pixels replaced by the input
before the tanh), which the official code leaves on at test time, is off when scoring unless
``SAGANConfig.test_dropout`` is set; the weights kept are chosen on data without labels (the normal
validation images and the unlabelled pool, :func:`pool_separation`), never on test images; the anomaly ratio
is how a benchmark builds the pool, not something the method knows.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..runtime import __version__, atomic_save, progress_bar
from ..scoring import score_statistics
from .schedule import Order, Source, check_held_out, validation_split

FORMAT_VERSION = 1
KIND = "patchgan_fast.SAGAN"
_CKPT_FORMAT = 1
CHECKPOINT = "sagan-checkpoint.pt"


@dataclass(frozen=True)
class SAGANConfig:
    """A SAGAN training run. The defaults are the official code's (``train.sh``), except ``val_fraction``.

    Attributes:
        image_size: H = W of the images; a multiple of 16, at least 32 (the generator sees half-size patches
            and halves them three times). The paper's: 64.
        width: the generator's first width (64 in the paper; G has about 45 M parameters there); the widths
            double at each of the three encoder stages.
        critic_width: the critic's first width (64), doubled at each of its log2(image_size) stride-2 stages,
            at most ``32 * critic_width``.
        res_blocks: residual blocks at the bottleneck (6).
        steps: iterations; the critic steps every iteration, the generator every ``critic_steps``-th (100,000).
        batch_size: images per iteration from each of the labelled and the unlabelled set (32).
        lr, betas: Adam, both networks (5e-5, (0.5, 0.999)), constant (the official decay subtracts 0.1 %).
        critic_steps: n_critic (2).
        penalty: the gradient penalty's weight (10).
        adv_weight, id_weight, restore_weight: the generator's three loss weights (1, 1, 1).
        keep: the share of pixels whose residual the generator keeps while training (0.95); the others take
            the input instead (so come out as tanh(2x)).
        test_dropout: apply that pixel dropout when scoring too, as the official code does (faithful, noisy);
            the scores are then seeded per batch.
        val_fraction: the share of labelled normals held out: their scores give ``score_stats`` and, with a
            pool, pick the weights kept (:func:`pool_separation` every ``val_every`` steps).
        seed, device, progress: as for the Patch-GAN; ``checkpoint_dir``/``checkpoint_every``: resumable runs.
    """

    image_size: int = 64
    width: int = 64
    critic_width: int = 64
    res_blocks: int = 6
    steps: int = 100_000
    batch_size: int = 32
    lr: float = 5e-5
    betas: tuple[float, float] = (0.5, 0.999)
    critic_steps: int = 2
    penalty: float = 10.0
    adv_weight: float = 1.0
    id_weight: float = 1.0
    restore_weight: float = 1.0
    keep: float = 0.95
    test_dropout: bool = False
    val_fraction: float = 0.1
    val_every: int = 1000
    checkpoint_every: int = 1000
    checkpoint_dir: Optional[str] = None
    seed: int = 0
    device: Optional[str] = None
    progress: bool = True

    def __post_init__(self):
        if self.image_size < 32 or self.image_size % 16:
            raise ValueError(f"SAGAN needs image_size a multiple of 16 and at least 32 (2 x 2 patches, each halved "
                             f"three times), got {self.image_size}")
        for name in ("width", "critic_width", "steps", "batch_size", "critic_steps", "val_every", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SAGANConfig.{name} must be a positive int, got {v!r}")
        if not 0 < self.keep <= 1:
            raise ValueError(f"SAGANConfig.keep must be in (0, 1], got {self.keep!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"SAGANConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        object.__setattr__(self, "betas", tuple(self.betas))

    @property
    def patch_size(self) -> int:
        """The grid on which a screen reports each image's worst region (the generator's own patches are
        ``image_size // 2``)."""
        return self.image_size // 8

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAGANConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def schedule_fields(self) -> dict:
        d = self.to_dict()
        for k in ("progress", "checkpoint_dir", "device", "val_every", "checkpoint_every", "test_dropout"):
            d.pop(k)
        return d


# ----------------------------------------------------------------------------- the 2 x 2 patches


def to_patches(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [4B, C, H/2, W/2]: each image's 2 x 2 patches in row-major order (top-left,
    top-right, bottom-left, bottom-right), image by image, as the official code's ``F.unfold``."""
    b, c, h, w = x.shape
    return x.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(4 * b, c, h // 2, w // 2)


def from_patches(p: Tensor) -> Tensor:
    """The inverse of :func:`to_patches`."""
    n, c, h, w = p.shape
    return p.reshape(n // 4, 2, 2, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n // 4, c, 2 * h, 2 * w)


def position_codes(batch: int, device=None) -> Tensor:
    """[4 * batch, 3]: patch k's index as 3 bits, most significant first (000, 001, 010, 011), repeated
    image by image (the official code's ``log2(4) + 1`` bits; the first is always 0)."""
    k = torch.arange(4, device=device)
    bits = torch.stack([(k >> 2) & 1, (k >> 1) & 1, k & 1], dim=1).float()
    return bits.repeat(batch, 1)


# ----------------------------------------------------------------------------- networks


def _norm(c: int) -> nn.Module:
    """IN: affine instance norm without running statistics (train and eval mode normalize alike)."""
    return nn.InstanceNorm2d(c, affine=True, track_running_stats=False)


def _plain_norm(c: int) -> nn.Module:
    """IN0: plain instance norm."""
    return nn.InstanceNorm2d(c)


class _ResBlock(nn.Module):
    """StarGAN's block: x + IN(conv3(ReLU(IN(conv3(x)))))."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), _norm(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), _norm(c))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class _ResBlockIn(nn.Module):
    """RB1(C_in -> C): s = ReLU(IN(conv3(x))); s + IN(conv3(s))."""

    def __init__(self, cin: int, c: int):
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(cin, c, 3, padding=1, bias=False), _norm(c), nn.ReLU(inplace=True))
        self.second = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), _norm(c))

    def forward(self, x: Tensor) -> Tensor:
        s = self.first(x)
        return s + self.second(s)


class _AttentionGate(nn.Module):
    """s * sigmoid(IN0(psi(ReLU(IN0(W_g g) + IN0(W_s s))))), with C/2 coefficients (ARRM)."""

    def __init__(self, c: int):
        super().__init__()
        n = c // 2
        self.wg = nn.Sequential(nn.Conv2d(c, n, 1), _plain_norm(n))
        self.ws = nn.Sequential(nn.Conv2d(c, n, 1), _plain_norm(n))
        self.psi = nn.Sequential(nn.Conv2d(n, 1, 1), _plain_norm(1), nn.Sigmoid())

    def forward(self, gate: Tensor, skip: Tensor) -> Tensor:
        return skip * self.psi(F.relu(self.wg(gate) + self.ws(skip)))


class _WithPosition(nn.Module):
    """Concatenates the 3 position-code maps, then 1x1 conv (C + 3 -> C, bias), IN0, ReLU."""

    def __init__(self, c: int):
        super().__init__()
        self.mix = nn.Sequential(nn.Conv2d(c + 3, c, 1), _plain_norm(c), nn.ReLU(inplace=True))

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        maps = code.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return self.mix(torch.cat([x, maps], dim=1))


def _down(cin: int, c: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, c, 4, 2, 1, bias=False), _norm(c), nn.ReLU(inplace=True))


def _up(cin: int, c: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(cin, c, 4, 2, 1, bias=False), _norm(c), nn.ReLU(inplace=True))


class SAGANGenerator(nn.Module):
    """The generator of the official code, per patch (see the module docstring); ``forward`` takes whole
    images and returns whole images in [-1, 1].

    Args:
        channels: image channels (the paper's: 1). width: the first width w (64); the encoder has w, 2w, 4w, 8w.
        res_blocks: residual blocks at the bottleneck (6). keep: the share of residual pixels kept in training.
    """

    def __init__(self, channels: int = 1, width: int = 64, res_blocks: int = 6, keep: float = 0.95):
        super().__init__()
        w = width
        self.keep = keep
        self.stem = nn.Sequential(nn.Conv2d(channels, w, 7, padding=3, bias=False), _norm(w), nn.ReLU(inplace=True))
        self.e1, self.p1 = _down(w, 2 * w), _WithPosition(2 * w)
        self.e2, self.p2 = _down(2 * w, 4 * w), _WithPosition(4 * w)
        self.e3, self.p3 = _down(4 * w, 8 * w), _WithPosition(8 * w)
        self.bottleneck = nn.Sequential(*[_ResBlock(8 * w) for _ in range(res_blocks)])
        self.g1, self.r1, self.u1 = _AttentionGate(8 * w), _ResBlockIn(16 * w, 8 * w), _up(8 * w, 4 * w)
        self.g2, self.r2, self.u2 = _AttentionGate(4 * w), _ResBlockIn(8 * w, 4 * w), _up(4 * w, 2 * w)
        self.g3, self.r3, self.u3 = _AttentionGate(2 * w), _ResBlockIn(4 * w, 2 * w), _up(2 * w, w)
        self.f1 = nn.Sequential(_up(4 * w, 2 * w), _up(2 * w, w))
        self.f2 = _up(2 * w, w)
        self.fuse = _ResBlockIn(3 * w, w)
        self.head = nn.Conv2d(w, channels, 7, padding=3, bias=False)

    def residual(self, patches: Tensor, codes: Tensor) -> Tensor:
        """delta for a batch of patches [4B, C, P, P] with their position codes [4B, 3]."""
        s1 = self.p1(self.e1(self.stem(patches)), codes)
        s2 = self.p2(self.e2(s1), codes)
        e = self.bottleneck(self.p3(self.e3(s2), codes))
        u1 = self.u1(self.r1(torch.cat([e, self.g1(e, e)], 1)))
        u2 = self.u2(self.r2(torch.cat([u1, self.g2(u1, s2)], 1)))
        u3 = self.u3(self.r3(torch.cat([u2, self.g3(u2, s1)], 1)))
        return self.head(self.fuse(torch.cat([self.f1(u1), self.f2(u2), u3], 1)))

    def forward(self, x: Tensor, dropout: Optional[bool] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """x: [B, C, H, W] in [-1, 1] -> tanh(x + delta). ``dropout`` (default: in training mode) replaces a
        ``1 - keep`` share of delta's pixels by x, drawn with ``generator`` when given."""
        patches = to_patches(x)
        delta = self.residual(patches, position_codes(len(x), x.device))
        if (self.training if dropout is None else dropout) and self.keep < 1:
            u = torch.rand(delta.shape, device=delta.device, generator=generator)
            delta = torch.where(u < self.keep, delta, patches.to(delta.dtype))
        return from_patches(torch.tanh(patches + delta))


class SAGANCritic(nn.Module):
    """StarGAN's discriminator as a WGAN critic: log2(size) stride-2 4x4 convs (bias, LeakyReLU 0.01),
    widths doubling from ``width`` (at most 32 x ``width``), no normalization, then a 3x3 conv to one scalar
    per image."""

    def __init__(self, channels: int = 1, size: int = 64, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        cin, c = channels, width
        for _ in range(int(math.log2(size))):
            layers += [nn.Conv2d(cin, c, 4, 2, 1), nn.LeakyReLU(0.01)]
            cin, c = c, min(2 * c, 32 * width)
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, 1, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x)).flatten(1).mean(1)


# ----------------------------------------------------------------------------- pseudo-anomalies and losses


def pseudo_anomalies(x: Tensor, sources: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Foreign-patch blends of the official code: per image a square box centred at integers (r, c), each
    uniform in the central 60 % (``[int(0.2 S), S - int(0.2 S) - 2]``), half-width uniform in
    ``[round(0.05 S), round(0.2 S) - 1]``, clipped to the image, and a weight alpha ~ U(0, 1); the box's pixels
    become ``(1 - alpha) x + alpha source`` at the same place.

    Args:
        x, sources (Tensor[B, C, S, S]): the images in [-1, 1] and each one's source image (another normal).
        generator: a CPU generator for the draws.

    Returns:
        (blends [B, C, S, S], boxes [B, 1, S, S] bool).
    """
    b, _, h, w = x.shape
    core_h, core_w = int(0.2 * h), int(0.2 * w)
    r = torch.randint(core_h, h - core_h - 1, (b,), generator=generator)
    c = torch.randint(core_w, w - core_w - 1, (b,), generator=generator)
    half = torch.randint(round(0.05 * w), round(0.2 * w), (b,), generator=generator)
    alpha = torch.rand(b, generator=generator)
    ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
    rows = (ys >= (r - half)[:, None]) & (ys < (r + half)[:, None])
    cols = (xs >= (c - half)[:, None]) & (xs < (c + half)[:, None])
    box = (rows[:, :, None] & cols[:, None, :])[:, None].to(x.device)
    m = box.to(x.dtype) * alpha.to(x.device, x.dtype).view(b, 1, 1, 1)
    return (1 - m) * x + m * sources, box


def critic_loss(critic: nn.Module, real: Tensor, fake: Tensor, eps: Tensor, penalty: float) -> tuple[Tensor, Tensor]:
    """WGAN-GP: ``mean D(fake) - mean D(real) + penalty * mean (||grad D(x^)|| - 1)^2``, x^ = eps real +
    (1 - eps) fake with ``eps`` [B, 1, 1, 1]. Returns (loss, the penalty term before its weight)."""
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    return critic(fake).mean() - critic(real).mean() + penalty * gp, gp


def generator_losses(critic: nn.Module, restored_pool: Tensor, normal: Tensor, restored_normal: Tensor,
                     restored_blend: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The generator's three terms: (adversarial ``-mean D(G(x_u))``, identity ``mean |x_n - G(x_n)|``,
    restoration ``mean (x_n - G(x~))^2``), means over pixels and images, in [-1, 1] units."""
    return (-critic(restored_pool).mean(), (normal - restored_normal).abs().mean(),
            ((normal - restored_blend) ** 2).mean())


def pool_separation(normal_scores: Tensor, pool_scores: Tensor) -> float:
    """How far the unlabelled pool's scores lie above the held-out normals': the probability that a pool
    image outscores a normal one (ties count half), the AUROC of "pool vs normal". It needs no labels; when
    the pool holds abnormal images in a fixed share it rises with the true AUROC (the pool's normal images
    add a constant 0.5 times their share)."""
    a, b = normal_scores.double().flatten(), pool_scores.double().flatten()
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"pool_separation needs scores of both sets, got {len(a)} and {len(b)}")
    _, inv, counts = torch.cat([a, b]).unique(return_inverse=True, return_counts=True)
    mean_rank = counts.cumsum(0).double() - (counts.double() + 1) / 2  # 0-based; tied values share the mean
    u = mean_rank[inv[len(a):]].sum() - len(b) * (len(b) - 1) / 2  # Mann-Whitney U of the pool
    return float(u / (len(a) * len(b)))


# ----------------------------------------------------------------------------- the model


def _device(config: SAGANConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _step_generator(seed: int, step: int) -> torch.Generator:
    """The draws of one step (batch order aside): a pure function of (seed, step), so resumed runs repeat them."""
    return torch.Generator().manual_seed((seed * 0x9E3779B1 + 7919 * step + 1) % 2**63)


class SAGAN(nn.Module):
    """A trained SAGAN detector. Attributes: ``config`` (:class:`SAGANConfig`), ``generator``, ``critic``,
    ``channels``, ``score_stats`` (of the held-out normals' scores), ``trained_on`` (``{"normal": n,
    "unlabelled": m}``: how many labelled and unlabelled images trained it), ``history``."""

    method = "sagan"

    def __init__(self, config: SAGANConfig, channels: int):
        super().__init__()
        self.config, self.channels = config, channels
        self.generator = SAGANGenerator(channels, config.width, config.res_blocks, config.keep)
        self.critic = SAGANCritic(channels, config.image_size, config.critic_width)
        self.score_stats: dict[str, float] = {}
        self.trained_on = {"normal": 0, "unlabelled": 0}
        self.history: list[dict] = []
        self.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------------- scoring

    def restore(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """G(x) in [-1, 1] for images uint8 or float in [0, 1] (on the model's device), without gradients; the
        pixel dropout only with ``config.test_dropout`` (the networks normalize alike in both modes)."""
        x = ops.to_unit(images).float() * 2 - 1
        x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda)
        with torch.inference_mode(), autocast:
            return self.generator(x, dropout=self.config.test_dropout, generator=generator).float()

    def maps(self, images: Tensor) -> Tensor:
        """[B, H, W] float32: ``|x - G(x)| / 2`` averaged over channels (intensity units in [0, 1])."""
        ops.check_images(images)
        dev = next(self.parameters()).device
        x = images.to(dev)
        g = torch.Generator(device=dev).manual_seed(self.config.seed) if self.config.test_dropout else None
        return ((ops.to_unit(x).float() * 2 - 1 - self.restore(x, g)).abs() / 2).mean(1)

    def score(self, images: Tensor, batch: int = 64) -> tuple[Tensor, Tensor]:
        """(scores [B], maps [B, H, W]) on the CPU: the score is the map's mean (the official code's)."""
        scores, maps = [], []
        for i in range(0, len(images), batch):
            m = self.maps(images[i:i + batch])
            scores.append(m.flatten(1).mean(1).cpu())
            maps.append(m.cpu())
        return torch.cat(scores), torch.cat(maps)

    def normalize(self, scores: Tensor) -> Tensor:
        if not self.score_stats or not self.score_stats.get("std"):
            raise RuntimeError("this model has no validation score statistics; train it with val_fraction > 0")
        return (scores - self.score_stats["mean"]) / self.score_stats["std"]

    # ------------------------------------------------------------------------- training

    @classmethod
    def fit(cls, normal: Tensor, config: Optional[SAGANConfig] = None, *, unlabelled: Optional[Tensor] = None,
            groups=None, resume: bool = False) -> "SAGAN":
        """Trains on labelled normal images and an unlabelled pool (:func:`fit`)."""
        return fit(cls, normal, config or SAGANConfig(), unlabelled=unlabelled, groups=groups, resume=resume)

    # ------------------------------------------------------------------------- files

    def state(self) -> dict:
        return {
            "kind": KIND, "method": self.method, "format_version": FORMAT_VERSION, "package_version": __version__,
            "config": self.config.to_dict(), "channels": self.channels, "score_stats": dict(self.score_stats),
            "trained_on": dict(self.trained_on),
            "generator": {k: v.detach().cpu() for k, v in self.generator.state_dict().items()},
            "critic": {k: v.detach().cpu() for k, v in self.critic.state_dict().items()},
        }

    def save(self, path: str | os.PathLike) -> None:
        atomic_save(self.state(), path)

    @classmethod
    def from_state(cls, state: dict, source: str = "state") -> "SAGAN":
        if not isinstance(state, dict) or state.get("kind") != KIND:
            raise ValueError(f"{source} is not a patchgan_fast SAGAN model file (no '{KIND}' header)")
        version = state.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise ValueError(f"{source} has SAGAN model format {version!r}, written by patchgan_fast "
                             f"{state.get('package_version')}; this version ({__version__}) reads formats 1 to "
                             f"{FORMAT_VERSION}")
        try:
            model = cls(SAGANConfig.from_dict(state["config"]), state["channels"])
            model.generator.load_state_dict(state["generator"])
            model.critic.load_state_dict(state["critic"])
            model.score_stats = dict(state.get("score_stats") or {})
            model.trained_on = dict(state.get("trained_on") or model.trained_on)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{source} holds a damaged SAGAN model ({type(exc).__name__}: {reason})") from exc
        return model.eval()


class SAGANScorer:
    """The screening interface of :class:`~patchgan_fast.Scorer` for a SAGAN model: ``scorer(images, keys)``
    returns (scores [B], region errors [B, G, G]) on its device, the mean of the map over each cell of
    ``config.patch_size`` (so a screen can say where the worst region is)."""

    def __init__(self, model: SAGAN, device: Optional[str | torch.device] = None):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.source = model.to(self.device).eval()
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32

    @staticmethod
    def top_patches(errors: Tensor) -> Tensor:
        """[B] int64: each image's worst region (row-major), from the region errors [B, G, G] it returned."""
        return errors.flatten(1).argmax(1)

    def __call__(self, images: Tensor, keys: Optional[Tensor] = None, *, check_finite: bool = True):
        ops.check_images(images)
        maps = self.source.maps(images.to(self.device))
        p = self.source.config.patch_size
        cells = F.avg_pool2d(maps[:, None], p)[:, 0]
        scores = maps.flatten(1).mean(1)
        if check_finite:
            ops.checks.raise_if_not_finite(scores)
        return scores, cells


# ----------------------------------------------------------------------------- training


def _check_pool(unlabelled, normal_source: Source, config: SAGANConfig) -> Optional[Source]:
    if unlabelled is None:
        return None
    pool = Source(unlabelled, config, what="unlabelled images", least=1)
    if pool.channels != normal_source.channels:
        raise ValueError(f"the unlabelled images have {pool.channels} channel(s), the normal images "
                         f"{normal_source.channels}: give both the same")
    return pool


def fit(cls, normal, config: SAGANConfig, *, unlabelled=None, groups=None, resume: bool = False) -> SAGAN:
    """Trains SAGAN.

    Args:
        cls: the model class (:class:`SAGAN`).
        normal: labelled normal images, a Tensor [N, C, S, S] (uint8, or float in [0, 1]) or a map-style dataset.
        config: the run.
        unlabelled: the unlabelled pool (same form; normal and abnormal images mixed, labels unknown). None: the
            one-class setting, where the normal images stand in for the pool (the adversarial term then asks
            only that restored normals look normal).
        groups: one label per normal image (e.g. the subject a slice belongs to): the validation share is held
            out as whole groups (:func:`~patchgan_fast.models.schedule.validation_split`). None: images at random.
        resume: continue from ``config.checkpoint_dir``'s checkpoint when there is one.

    Returns:
        The model in eval mode. A ``val_fraction`` share of the normals and of the pool is held out (never
        trained on); with both, the generator weights kept are those with the best :func:`pool_separation` of the
        held-out pool images (at most 512) from the held-out normals, checked every ``val_every`` steps, the later
        of equal ones (a few held-out images give few distinct values, and the more trained weights are the better
        guess; pool images the generator trained on would not do: it learns to change those, normal or not);
        otherwise the last ones.

    Raises:
        ValueError: fewer than 2 normal images, images of another size, an empty pool or one of another shape.
    """
    src = Source(normal, config)
    pool = _check_pool(unlabelled, src, config)
    device = _device(config)
    val_idx, train_idx = validation_split(src.n, config, groups)
    if len(train_idx) < 2:
        raise ValueError(f"SAGAN needs at least 2 normal training images after the validation split, got "
                         f"{len(train_idx)} (val_fraction {config.val_fraction})")
    torch.manual_seed(config.seed)
    model = cls(config, src.channels).to(device)
    model.trained_on = {"normal": src.n, "unlabelled": 0 if pool is None else pool.n}
    run = _Run(model, config, device, src, train_idx, pool, src.batch(val_idx) if len(val_idx) else None,
               val_idx.tolist())
    if resume:
        run.resume()
    run.train()
    model.eval()
    if run.best is not None:
        model.generator.load_state_dict(run.best[1])
    if run.val_images is not None:
        model.score_stats = score_statistics(model.score(run.val_images)[0])
    model.history = run.history
    return model


class _Run:
    def __init__(self, model: SAGAN, config: SAGANConfig, device, src: Source, train_idx: Tensor,
                 pool: Optional[Source], val_images: Optional[Tensor], held_out: list[int]):
        self.model, self.config, self.device, self.src, self.pool = model, config, device, src, pool
        self.train_idx, self.val_images = train_idx, val_images
        self.held_out = held_out  # the validation images' indices: a resumed run must hold out the same ones
        self.order = Order(train_idx, config.seed)
        # a held-out share of the pool (as of the normals) for choosing the weights: images it never trained on
        probe_idx, pool_train = validation_split(pool.n, config) if pool is not None else (None, None)
        self.position = torch.full((src.n,), -1, dtype=torch.int64)
        self.position[train_idx] = torch.arange(len(train_idx))
        # one-class: the normals stand in for the pool, in an order of their own
        self.pool_order = Order(pool_train if pool is not None else train_idx, config.seed + 1)
        self.opt_g = torch.optim.Adam(model.generator.parameters(), config.lr, betas=config.betas)
        self.opt_d = torch.optim.Adam(model.critic.parameters(), config.lr, betas=config.betas)
        self.step, self.best, self.history = 0, None, []
        self.ckpt = Path(config.checkpoint_dir) / CHECKPOINT if config.checkpoint_dir else None
        usable = pool is not None and val_images is not None and len(probe_idx) > 0
        self.probe = pool.batch(probe_idx[:512]) if usable else None

    def _images(self, source: Source, order: Order) -> tuple[Tensor, Tensor]:
        """(indices, images in [-1, 1] on the device) of this step's batch from ``source`` in ``order``."""
        b = self.config.batch_size
        keys = order.take(torch.arange(self.step * b, (self.step + 1) * b))
        x = ops.to_unit(source.batch(keys)).float() * 2 - 1
        return keys, x.to(self.device).contiguous(memory_format=torch.channels_last)

    def one_step(self) -> dict[str, Tensor]:
        """One iteration: a critic step, and a generator step every ``critic_steps``-th; the losses (device
        tensors, read back only when logged)."""
        cfg, m, dev = self.config, self.model, self.device
        g = _step_generator(cfg.seed, self.step)
        keys, x_n = self._images(self.src, self.order)
        x_u = self._images(self.pool if self.pool is not None else self.src, self.pool_order)[1]
        drop = torch.Generator(device=dev).manual_seed(int(torch.randint(2**62, (1,), generator=g)))
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
        with torch.no_grad(), autocast:
            fake = m.generator(x_u, generator=drop).float()
        eps = torch.rand(len(x_n), 1, 1, 1, generator=g).to(dev)
        loss_d, gp = critic_loss(m.critic, x_n, fake, eps, cfg.penalty)  # fp32: the penalty's double backward
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        record = {"d": loss_d.detach(), "gp": gp.detach()}
        if (self.step + 1) % cfg.critic_steps == 0:
            n = len(self.train_idx)
            shift = torch.randint(1, n, (len(keys),), generator=g)  # another normal, never the image itself
            others = self.train_idx[(self.position[keys] + shift) % n]
            blend, _ = pseudo_anomalies(x_n, (ops.to_unit(self.src.batch(others)).float() * 2 - 1).to(dev), g)
            m.critic.requires_grad_(False)
            with autocast:
                adv, ident, rest = generator_losses(m.critic, m.generator(x_u, generator=drop), x_n,
                                                    m.generator(x_n, generator=drop), m.generator(blend, generator=drop))
            loss_g = cfg.adv_weight * adv + cfg.id_weight * ident + cfg.restore_weight * rest
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            m.critic.requires_grad_(True)
            record.update(adv=adv.detach(), id=ident.detach(), restore=rest.detach())
        return record

    def _validate(self) -> float:
        self.model.eval()
        sep = pool_separation(self.model.score(self.val_images)[0], self.model.score(self.probe)[0])
        self.model.train()
        if self.best is None or sep >= self.best[0]:
            self.best = (sep, {k: v.detach().cpu().clone() for k, v in self.model.generator.state_dict().items()})
        return sep

    def train(self) -> None:
        cfg = self.config
        bar = progress_bar(cfg.steps, "training SAGAN", "step", initial=self.step,
                           enabled=cfg.progress and self.step < cfg.steps)
        self.model.train()
        try:
            while self.step < cfg.steps:
                losses = self.one_step()
                self.step += 1
                if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                    record = {"step": self.step, **{k: float(v) for k, v in losses.items()}}
                    if not all(math.isfinite(v) for v in record.values()):
                        raise FloatingPointError(f"SAGAN training diverged by step {self.step} ({record}); lower lr")
                    if self.probe is not None:
                        record["pool_separation"] = self._validate()
                    self.history.append(record)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            if bar is not None:
                bar.close()

    def save(self) -> None:
        if self.ckpt is None:
            return
        atomic_save({"format": _CKPT_FORMAT, "step": self.step, "schedule": self.config.schedule_fields(),
                     "model": self.model.state(), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                     "best": None if self.best is None else {"value": self.best[0], "generator": self.best[1]},
                     "history": self.history, "held_out": self.held_out}, self.ckpt)

    def resume(self) -> None:
        if self.ckpt is None or not self.ckpt.is_file():
            return
        try:
            ckpt = torch.load(self.ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"checkpoint {str(self.ckpt)!r} is unreadable (corrupt or truncated?): {exc}") from exc
        if not isinstance(ckpt, dict) or ckpt.get("format") != _CKPT_FORMAT:
            raise ValueError(f"{str(self.ckpt)!r} is not a SAGAN checkpoint of format {_CKPT_FORMAT}")
        theirs, ours = ckpt["schedule"], self.config.schedule_fields()
        diff = sorted(k for k in set(theirs) | set(ours) if _plain(theirs.get(k)) != _plain(ours.get(k)))
        if diff:
            raise ValueError(f"cannot resume from {str(self.ckpt)!r}: the config differs in {', '.join(diff)}")
        check_held_out(self.ckpt, ckpt, self.held_out)
        self.model.generator.load_state_dict(ckpt["model"]["generator"])
        self.model.critic.load_state_dict(ckpt["model"]["critic"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.step, self.history = ckpt["step"], list(ckpt["history"])
        self.best = None if ckpt["best"] is None else (ckpt["best"]["value"], ckpt["best"]["generator"])
        if self.config.progress:
            print(f"resuming SAGAN from {self.ckpt} at step {self.step}/{self.config.steps}", file=sys.stderr)


def _plain(v):
    return list(v) if isinstance(v, tuple) else v
