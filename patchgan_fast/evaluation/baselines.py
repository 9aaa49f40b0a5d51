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

Each ``fit`` takes a ``checkpoint_dir``: training then survives an interruption (:class:`_Resumable`), as the
benchmark uses it for every job.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Reconstructor, TrainConfig
from ..ops import to_unit
from ..runtime import atomic_save

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


def _batches(n: int, batch: int, steps: int, seed: int, start: int = 0):
    """Indices of ``steps`` batches drawn epoch by epoch from a seeded permutation, from the ``start``-th on."""
    g = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.int64)
    for step in range(steps):
        while len(order) < batch:
            order = torch.cat([order, torch.randperm(n, generator=g)])
        idx, order = order[:batch], order[batch:]
        if step >= start:
            yield idx


def _minimize(distance, optimizer, x_all: Tensor, config: TrainConfig, device: torch.device, seed: int,
              run: "_Resumable", before: int = 0) -> None:
    """``config.steps`` optimizer steps on the mean of ``distance(batch)[0]`` (the method's own score), the
    ``before``-th to the ``before + config.steps``-th steps of ``run`` (those it has not done yet)."""
    for idx in _batches(len(x_all), config.batch_size, config.steps, seed, max(0, run.done - before)):
        loss = distance(x_all[idx].to(device))[0].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step_done()


#: The file of a baseline's training state in its ``checkpoint_dir``.
CHECKPOINT = "baseline-checkpoint.pt"
_CKPT_FORMAT = 1


class _Resumable:
    """A baseline's training that an interruption does not lose (a context manager around its loop).

    With a ``folder``, the ``parts`` (networks and optimizers, by name), the steps done and the random state
    are written to ``folder/CHECKPOINT`` every ``every`` seconds, after the last step, and when Ctrl-C or SIGTERM
    stops the run: a signal ends it after the step under way (a second Ctrl-C at once, from the last checkpoint;
    a SIGTERM after Ctrl-C, as a process pool's terminate sends, changes nothing), so a checkpoint always holds
    whole steps. Built with the same folder, it loads them back (``done`` steps), and the loop continues
    with the same batches and noise an uninterrupted run would have drawn. Without a folder nothing is written
    and signals act as usual.
    """

    def __init__(self, folder: Optional[str], name: str, steps: int, parts: dict, every: float = 600.0):
        self.path = Path(folder) / CHECKPOINT if folder else None
        self.name, self.steps, self.parts, self.every = name, steps, parts, every
        self.done, self.signal, self._old = 0, None, {}
        if self.path is not None and self.path.is_file():
            self._load()
        self._saved = time.monotonic()

    def _load(self) -> None:
        try:
            ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{self.name}: checkpoint {str(self.path)!r} is unreadable (corrupt or truncated?): "
                             f"{exc}") from exc
        mine = {"format": _CKPT_FORMAT, "method": self.name, "steps": self.steps}
        theirs = {k: ckpt.get(k) for k in mine} if isinstance(ckpt, dict) else {}
        if theirs != mine or set(ckpt["parts"]) != set(self.parts):
            raise ValueError(f"{self.name}: {str(self.path)!r} is not a checkpoint of this training (expected "
                             f"{mine}, got {theirs}); give another checkpoint_dir or delete the file to start over")
        for k, part in self.parts.items():
            part.load_state_dict(ckpt["parts"][k])
        torch.set_rng_state(ckpt["rng"])
        if ckpt["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self.done = int(ckpt["done"])

    def save(self) -> None:
        atomic_save({"format": _CKPT_FORMAT, "method": self.name, "steps": self.steps, "done": self.done,
                     "parts": {k: part.state_dict() for k, part in self.parts.items()}, "rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, self.path)
        self._saved = time.monotonic()

    def __enter__(self) -> "_Resumable":
        if self.path is not None and threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, kind, value, traceback) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
        if self.signal is not None and kind is None:  # a signal after the last step (whose checkpoint is written)
            raise KeyboardInterrupt(f"{self.name}: stopped by signal {self.signal} after its training")

    def _on_signal(self, signum, frame) -> None:
        if self.signal == signum == signal.SIGINT:  # Ctrl-C twice: stop now, from the last checkpoint
            raise KeyboardInterrupt(f"{self.name}: stopped by signal {signum}")
        self.signal = self.signal or signum

    def step_done(self) -> None:
        """After each whole step: the checkpoint on schedule; after a signal, the checkpoint and KeyboardInterrupt."""
        self.done += 1
        if self.path is None:
            return
        if self.signal is not None:
            self.save()
            raise KeyboardInterrupt(f"{self.name}: stopped by signal {self.signal} after step {self.done} of "
                                    f"{self.steps}; fit again with checkpoint_dir={str(self.path.parent)!r} to go on")
        if self.done == self.steps or time.monotonic() - self._saved >= self.every:
            self.save()


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
    then the izi_f encoder (kappa = 1); ``config.steps`` generator steps and as many encoder steps (``fit``'s
    ``checkpoint_dir``: resumable, :class:`_Resumable`)."""

    name = "fanogan"

    def __init__(self, config: TrainConfig, latent: int = 128, critic_steps: int = 5, penalty: float = 10.0,
                 kappa: float = 1.0, lr: float = 1e-4):
        self.config, self.latent, self.critic_steps = config, latent, critic_steps
        self.penalty, self.kappa, self.lr = penalty, kappa, lr

    def fit(self, images: Tensor, checkpoint_dir: Optional[str] = None) -> "FAnoGANMethod":
        cfg = self.config
        dev, self.G, self.D = _gan(images, cfg, "fanogan", self.latent)
        c, s, d, w = images.shape[1], cfg.image_size, cfg.depth, cfg.width
        self.E = nn.Sequential(_Critic(c, s, d, w, out=self.latent), nn.Tanh()).to(dev)
        x_all = to_unit(images) * 2 - 1
        opt_g = torch.optim.Adam(self.G.parameters(), self.lr, betas=(0.0, 0.9))
        opt_d = torch.optim.Adam(self.D.parameters(), self.lr, betas=(0.0, 0.9))
        opt_e = torch.optim.Adam(self.E.parameters(), self.lr, betas=(0.0, 0.9))
        parts = {"G": self.G, "D": self.D, "E": self.E, "opt_g": opt_g, "opt_d": opt_d, "opt_e": opt_e}
        with _Resumable(checkpoint_dir, "fanogan", 2 * cfg.steps, parts) as run:
            self._train_gan(x_all, opt_g, opt_d, run, dev)
            self.G.requires_grad_(False).eval()
            self.D.requires_grad_(False).eval()
            _minimize(self._distance, opt_e, x_all, cfg, dev, cfg.seed + 1, run, before=cfg.steps)
        self.E.eval()
        self.device = dev
        return self

    def _train_gan(self, x_all: Tensor, opt_g, opt_d, run: _Resumable, dev: torch.device) -> None:
        """The WGAN-GP's generator steps ``run`` has not done yet."""
        cfg = self.config
        done = min(run.done, cfg.steps)
        batches = _batches(len(x_all), cfg.batch_size, cfg.steps * self.critic_steps, cfg.seed, done * self.critic_steps)
        for _ in range(done, cfg.steps):
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
            run.step_done()

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

    def fit(self, images: Tensor, checkpoint_dir: Optional[str] = None) -> "AnoGANMethod":
        """Trains the DCGAN (``checkpoint_dir``: resumable, :class:`_Resumable`)."""
        cfg = self.config
        dev, self.G, self.D = _gan(images, cfg, "anogan", self.latent)
        x_all = to_unit(images) * 2 - 1
        opt_g = torch.optim.Adam(self.G.parameters(), self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.D.parameters(), self.lr, betas=(0.5, 0.999))
        parts = {"G": self.G, "D": self.D, "opt_g": opt_g, "opt_d": opt_d}
        with _Resumable(checkpoint_dir, "anogan", cfg.steps, parts) as run:
            self._train_gan(x_all, opt_g, opt_d, run, dev)
        self.G.requires_grad_(False).eval()
        self.D.requires_grad_(False).eval()
        self.device = dev
        return self

    def _train_gan(self, x_all: Tensor, opt_g, opt_d, run: _Resumable, dev: torch.device) -> None:
        """The DCGAN's steps ``run`` has not done yet."""
        cfg = self.config
        bce = nn.functional.binary_cross_entropy_with_logits
        for idx in _batches(len(x_all), cfg.batch_size, cfg.steps, cfg.seed, run.done):
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
            run.step_done()

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

    def fit(self, images: Tensor, checkpoint_dir: Optional[str] = None) -> "PerceptualAEMethod":
        """Trains the autoencoder (``checkpoint_dir``: resumable, :class:`_Resumable`)."""
        cfg = self.config
        _check_train_images(images, cfg, "perceptual_ae")
        dev = _device(cfg)
        torch.manual_seed(cfg.seed)
        self.ae = Reconstructor(images.shape[1], cfg.width, cfg.depth, skips=False).to(dev)
        self.perceptual = self.perceptual.to(dev).eval()
        for p in self.perceptual.parameters():  # (exported modules have no requires_grad_)
            p.requires_grad_(False)
        x_all = to_unit(images)
        opt = torch.optim.Adam(self.ae.parameters(), cfg.lr)
        with _Resumable(checkpoint_dir, "perceptual_ae", cfg.steps, {"ae": self.ae, "opt": opt}) as run:
            _minimize(self._distance, opt, x_all, cfg, dev, cfg.seed, run)
        self.ae.eval()
        self.device = dev
        return self

    def score(self, images: Tensor, ranking: Optional[str] = None) -> tuple[Tensor, Tensor]:
        return _batched_score(self._distance, images, self.device)
