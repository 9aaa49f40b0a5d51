"""Baselines with their own networks and training loops: f-AnoGAN, AnoGAN and the deep perceptual autoencoder.

Both follow their papers' scoring rules with fixed hyperparameters (never tuned on test labels) and
share the interface of :mod:`patchgan_fast.evaluation.methods`: ``fit(normal_images)`` and ``score(images) ->
(scores [B], maps [B, H, W])``, images ``[N, C, H, W]`` uint8 or float in [0, 1].

* f-AnoGAN (Schlegl et al., Medical Image Analysis 2019): a WGAN-GP generator G and critic D are
  trained on normal images; then an encoder E is trained with G and D frozen (the "izi_f" scheme) to
  minimize ``||x - G(E(x))||^2 / n + kappa * ||f(x) - f(G(E(x)))||^2 / n_f``, where f is the critic's
  last feature layer. That same quantity is the anomaly score; the pixel map is ``(x - G(E(x)))^2``.
* Deep perceptual autoencoder (Shvetsova et al., IEEE Access 2021): a convolutional autoencoder
  trained to minimize the perceptual distance ``||F(x) - F(AE(x))||^2`` between the features F of a
  fixed network; the score is that distance. The published form uses ImageNet-pretrained VGG19
  features, which this package never downloads: pass such a network as ``perceptual`` (or a
  ``torch.export`` .pt2 file to ``patchgan-fast benchmark --perceptual-net``). Without one, F is a fixed,
  seeded, randomly initialized VGG-style stack, a weaker stand-in that the results label as such.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Reconstructor, TrainConfig
from ..ops import to_unit

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _device(config: TrainConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_train_images(images: Tensor, config: TrainConfig, name: str) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected training images as a tensor [N, C, H, W], got {got}")
    h, w = images.shape[-2:]
    if h != config.image_size or w != config.image_size:
        raise ValueError(
            f"{name}: expected {config.image_size}x{config.image_size} images (config.image_size), got {h}x{w}"
        )


def _batches(n: int, batch: int, steps: int, seed: int):
    """Indices of ``steps`` batches drawn epoch by epoch from a seeded permutation."""
    g = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        while len(order) < batch:
            order = torch.cat([order, torch.randperm(n, generator=g)])
        idx, order = order[:batch], order[batch:]
        yield idx


def _minimize(distance, optimizer, x_all: Tensor, config: TrainConfig, device: torch.device, seed: int) -> None:
    """``config.steps`` optimizer steps on the mean of ``distance(batch)[0]`` (the method's own score)."""
    for idx in _batches(len(x_all), config.batch_size, config.steps, seed):
        loss = distance(x_all[idx].to(device))[0].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _batched_score(fn, images: Tensor, device: torch.device, batch: int = 256) -> tuple[Tensor, Tensor]:
    scores, maps = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            s, m = fn(to_unit(images[i:i + batch]).to(device))
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
    return torch.cat(scores), torch.cat(maps)


# ----------------------------------------------------------------------------- f-AnoGAN


class _Generator(nn.Module):
    """DCGAN-style generator: z -> [C, S, S] in [-1, 1] through ``depth`` nearest-upsample stages."""

    def __init__(self, channels: int, size: int, depth: int, width: int, latent: int):
        super().__init__()
        self.base = size // 2**depth
        widths = [min(width * 2**i, 256) for i in range(depth + 1)]
        self.top = widths[-1]
        self.fc = nn.Linear(latent, self.top * self.base * self.base)
        blocks: list[nn.Module] = []
        for i in reversed(range(depth)):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i], 3, padding=1),
                       nn.GroupNorm(min(8, widths[i]), widths[i]), nn.LeakyReLU(0.2, inplace=True)]
        self.net = nn.Sequential(*blocks, nn.Conv2d(widths[0], channels, 3, padding=1), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.net(F.leaky_relu(self.fc(z), 0.2).view(len(z), self.top, self.base, self.base))


class _Critic(nn.Module):
    """Strided conv stack without normalization (the gradient penalty needs per-sample gradients);
    ``features`` is f(x) of f-AnoGAN, the flattened last feature map."""

    def __init__(self, channels: int, size: int, depth: int, width: int, out: int = 1):
        super().__init__()
        widths = [min(width * 2**i, 256) for i in range(depth + 1)]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        for i in range(depth):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1] * (size // 2**depth) ** 2, out)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _gan(images: Tensor, config: TrainConfig, name: str, latent: int) -> tuple[torch.device, nn.Module, nn.Module]:
    """Checks the training images, seeds, and builds a generator and a critic (discriminator) on the device."""
    _check_train_images(images, config, name)
    dev = _device(config)
    torch.manual_seed(config.seed)
    c, s, d, w = images.shape[1], config.image_size, config.depth, config.width
    return dev, _Generator(c, s, d, w, latent).to(dev), _Critic(c, s, d, w).to(dev)


class FAnoGANMethod:
    """f-AnoGAN: WGAN-GP (critic 5 steps per generator step, penalty 10, Adam 1e-4, betas (0, 0.9)),
    then the izi_f encoder (kappa = 1); ``config.steps`` generator steps and as many encoder steps."""

    name = "fanogan"

    def __init__(self, config: TrainConfig, latent: int = 128, critic_steps: int = 5, penalty: float = 10.0,
                 kappa: float = 1.0, lr: float = 1e-4):
        self.config, self.latent, self.critic_steps = config, latent, critic_steps
        self.penalty, self.kappa, self.lr = penalty, kappa, lr

    def fit(self, images: Tensor) -> "FAnoGANMethod":
        cfg = self.config
        dev, self.G, self.D = _gan(images, cfg, "fanogan", self.latent)
        c, s, d, w = images.shape[1], cfg.image_size, cfg.depth, cfg.width
        self.E = nn.Sequential(_Critic(c, s, d, w, out=self.latent), nn.Tanh()).to(dev)
        x_all = to_unit(images) * 2 - 1
        opt_g = torch.optim.Adam(self.G.parameters(), self.lr, betas=(0.0, 0.9))
        opt_d = torch.optim.Adam(self.D.parameters(), self.lr, betas=(0.0, 0.9))
        batches = _batches(len(x_all), cfg.batch_size, cfg.steps * self.critic_steps, cfg.seed)
        for _ in range(cfg.steps):
            for _ in range(self.critic_steps):
                x = x_all[next(batches)].to(dev)
                z = torch.randn(len(x), self.latent, device=dev)
                with torch.no_grad():
                    fake = self.G(z)
                eps = torch.rand(len(x), 1, 1, 1, device=dev)
                mix = (eps * x + (1 - eps) * fake).requires_grad_(True)
                grad, = torch.autograd.grad(self.D(mix).sum(), mix, create_graph=True)
                gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
                loss_d = self.D(fake).mean() - self.D(x).mean() + self.penalty * gp
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            loss_g = -self.D(self.G(torch.randn(cfg.batch_size, self.latent, device=dev))).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
        self.G.requires_grad_(False).eval()
        self.D.requires_grad_(False).eval()
        opt_e = torch.optim.Adam(self.E.parameters(), self.lr, betas=(0.0, 0.9))
        _minimize(self._distance, opt_e, x_all, cfg, dev, cfg.seed + 1)
        self.E.eval()
        self.device = dev
        return self

    def _distance(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(izi_f distance per image, squared residual map [B, H, W]) for x in [-1, 1]."""
        rec = self.G(self.E(x))
        residual = (x - rec) ** 2
        feat = (self.D.features(x) - self.D.features(rec)) ** 2
        return residual.flatten(1).mean(1) + self.kappa * feat.mean(1), residual.mean(1)

    def score(self, images: Tensor, ranking: Optional[str] = None) -> tuple[Tensor, Tensor]:
        return _batched_score(lambda x: self._distance(x * 2 - 1), images, self.device)


# ----------------------------------------------------------------------------- AnoGAN


class AnoGANMethod:
    """AnoGAN (Schlegl et al., IPMI 2017): a DCGAN trained on normal images, then every query mapped to the
    latent space by ``latent_steps`` (500) gradient steps on z with G and D frozen, minimizing
    ``(1 - lam) * sum|x - G(z)| + lam * sum|f(x) - f(G(z))|`` (``lam`` = 0.1; f: the discriminator's last
    feature layer, feature matching). The anomaly score is that loss at the last step, A(x) = (1 - lam) R(x)
    + lam D(x); the pixel map is |x - G(z)|. z starts from the uniform prior on [-1, 1] (seeded, per image
    by its position in the scored set) and is kept in it; the paper leaves the optimizer of z open: Adam.
    Every query of a batch is searched at once, one batched backward per step; each image's loss is its
    own, so the batch does not change a score.

    Args:
        config: image size, widths (``width``, ``depth``), ``steps`` DCGAN steps, batch size, seed, device.
        latent: size of z. latent_steps: gradient steps per query. lam: the weight of the feature term.
        lr: Adam learning rate of the DCGAN (betas 0.5, 0.999). z_lr: Adam learning rate of the search.
    """

    name = "anogan"

    def __init__(self, config: TrainConfig, latent: int = 100, latent_steps: int = 500, lam: float = 0.1,
                 lr: float = 2e-4, z_lr: float = 0.05):
        if not isinstance(latent_steps, int) or latent_steps < 1:
            raise ValueError(f"anogan: expected latent_steps a positive int, got {latent_steps!r}")
        if not 0 <= lam <= 1:
            raise ValueError(f"anogan: expected lam in [0, 1], got {lam!r}")
        self.config, self.latent, self.latent_steps, self.lam, self.lr, self.z_lr = (
            config, latent, latent_steps, lam, lr, z_lr)

    def fit(self, images: Tensor) -> "AnoGANMethod":
        cfg = self.config
        dev, self.G, self.D = _gan(images, cfg, "anogan", self.latent)
        x_all = to_unit(images) * 2 - 1
        opt_g = torch.optim.Adam(self.G.parameters(), self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.D.parameters(), self.lr, betas=(0.5, 0.999))
        bce = nn.functional.binary_cross_entropy_with_logits
        for idx in _batches(len(x_all), cfg.batch_size, cfg.steps, cfg.seed):
            x = x_all[idx].to(dev)
            z = torch.rand(len(x), self.latent, device=dev) * 2 - 1
            fake = self.G(z)
            real_logits, fake_logits = self.D(x), self.D(fake.detach())
            loss_d = bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            logits = self.D(fake)
            loss_g = bce(logits, torch.ones_like(logits))  # the non-saturating generator loss
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
        self.G.requires_grad_(False).eval()
        self.D.requires_grad_(False).eval()
        self.device = dev
        return self

    def search(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """The latent search for a batch ``x`` in [-1, 1] from ``z`` (each row one query's start):
        (A(x) per image, pixel map |x - G(z)| [B, H, W]) after ``latent_steps`` steps."""
        z = z.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.z_lr)
        with torch.enable_grad():
            target = self.D.features(x)
            for _ in range(self.latent_steps):
                loss = self._loss(x, target, self.G(z))
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                with torch.no_grad():
                    z.clamp_(-1, 1)
        with torch.no_grad():
            rec = self.G(z)
            return self._loss(x, target, rec), (x - rec).abs().mean(1)

    def _loss(self, x: Tensor, target: Tensor, rec: Tensor) -> Tensor:
        residual = (x - rec).abs().flatten(1).sum(1)
        feature = (target - self.D.features(rec)).abs().sum(1)
        return (1 - self.lam) * residual + self.lam * feature

    def score(self, images: Tensor, ranking: Optional[str] = None, batch: int = 256) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.config.seed + 7)
        starts = torch.rand(len(images), self.latent, generator=g) * 2 - 1  # by position in the scored set
        scores, maps = [], []
        for i in range(0, len(images), batch):
            x = to_unit(images[i:i + batch]).to(self.device) * 2 - 1
            s, m = self.search(x, starts[i:i + batch].to(self.device))
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
        return torch.cat(scores), torch.cat(maps)


# ----------------------------------------------------------------------------- deep perceptual AE


def random_perceptual_net(seed: int = 0, width: int = 32, stages: int = 3) -> nn.Module:
    """A fixed VGG-style stack (3x3 convs + ReLU, max-pooling between stages) with seeded random
    weights; the stand-in for VGG19 features when no pretrained network is given."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    cin = 3
    for i in range(stages):
        cout = width * 2**i
        for _ in range(2):
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            with torch.no_grad():
                conv.weight.normal_(0.0, (2.0 / (9 * cin)) ** 0.5, generator=g)
                conv.bias.zero_()
            layers += [conv, nn.ReLU(inplace=True)]
            cin = cout
        if i < stages - 1:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class PerceptualAEMethod:
    """Deep perceptual autoencoder: the package's :class:`Reconstructor` (no skips, no masks) trained
    with Adam on the perceptual distance, scored by it.

    Args:
        config: image size, widths, steps, batch size, learning rate, seed, device.
        perceptual: feature network F mapping ``[N, 3, H, W]`` ImageNet-normalized images to
            ``[N, C', H', W']``, e.g. ``torchvision.models.vgg19(weights=...).features[:27]``; frozen.
            Gray images are repeated to 3 channels. Default: :func:`random_perceptual_net`.
    """

    name = "perceptual_ae"

    def __init__(self, config: TrainConfig, perceptual: Optional[nn.Module] = None):
        self.config = config
        self.pretrained = perceptual is not None
        self.perceptual = perceptual if perceptual is not None else random_perceptual_net(config.seed)

    def _features(self, x: Tensor) -> Tensor:
        """x in [0, 1], [N, C, H, W] -> F(x)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"perceptual_ae: expected images with 1 or 3 channels, got {x.shape[1]}")
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        out = self.perceptual((x - mean) / std)
        if not isinstance(out, Tensor) or out.dim() != 4:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"perceptual_ae: the perceptual network must return [N, C, H, W] features, got {got}")
        return out

    def _distance(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(perceptual distance per image, distance map [B, H, W]) for x in [0, 1]."""
        rec = self.ae((x - 0.5) / 0.5) * 0.5 + 0.5
        diff = ((self._features(x) - self._features(rec)) ** 2).mean(1, keepdim=True)
        maps = F.interpolate(diff, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return diff.flatten(1).mean(1), maps

    def fit(self, images: Tensor) -> "PerceptualAEMethod":
        cfg = self.config
        _check_train_images(images, cfg, "perceptual_ae")
        dev = _device(cfg)
        torch.manual_seed(cfg.seed)
        self.ae = Reconstructor(images.shape[1], cfg.width, cfg.depth, skips=False).to(dev)
        self.perceptual = self.perceptual.to(dev).eval()
        for p in self.perceptual.parameters():  # (exported modules have no requires_grad_)
            p.requires_grad_(False)
        x_all = to_unit(images)
        _minimize(self._distance, torch.optim.Adam(self.ae.parameters(), cfg.lr), x_all, cfg, dev, cfg.seed)
        self.ae.eval()
        self.device = dev
        return self

    def score(self, images: Tensor, ranking: Optional[str] = None) -> tuple[Tensor, Tensor]:
        return _batched_score(self._distance, images, self.device)
