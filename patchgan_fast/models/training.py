"""Adversarial training of the Patch-GAN (eq. 1-4): alternating D and R updates with AdamW.

The schedule is a pure function of (config, step): the data order of every epoch is a seeded
permutation (:mod:`.schedule`) and the masks come from the counter-based masks op, so a run resumed
from a checkpoint continues exactly where it stopped, and under ``torchrun`` each rank reads its own
shard of every global batch. The model class is given by :meth:`PatchGAN.fit
<patchgan_fast.PatchGAN.fit>`, so this module never imports it (annotations name it as a string). Rank 0 writes the checkpoints; Ctrl-C or SIGTERM writes one before stopping (under DDP
all ranks stop after the same step).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..runtime import atomic_save, distributed, local_cuda_device, progress_bar
from ..scoring import combine_errors, patch_scores, score_batch, score_statistics
from .config import TrainConfig
from .schedule import Order, Source, positions, bank_choice, batches, check_held_out, validation_split

if TYPE_CHECKING:  # the class is given to fit; importing it at run time would be a cycle
    from .patchgan import PatchGAN

CHECKPOINT = "checkpoint.pt"
_CKPT_FORMAT = 1


# ----------------------------------------------------------------------------- distributed


def _device(config: TrainConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return local_cuda_device()
    return torch.device("cpu")


# ----------------------------------------------------------------------------- one step


def _mask_seed(config: TrainConfig, step: int) -> int:
    return (config.seed * 0x9E3779B1 + step) % 2**32


def _masked_inputs(x: Tensor, keys: Tensor, model: "PatchGAN", step: int) -> tuple[Tensor, Tensor]:
    """(masked input z, normalized target x): random boxes for half of the batch, one copy of the
    scoring layout for the other half, so training matches scoring. The batch is normalized once and
    each image gets only the mask it uses (not K copies of the batch)."""
    cfg = model.config
    seed = _mask_seed(cfg, step)
    target = ops.mask_images(x, keys, layout="none", num_copies=1, mean=model.mean, std=model.std,
                             memory_format=torch.channels_last)[0]  # the networks' layout
    h, w = target.shape[-2:]
    box_count, box_size = cfg.boxes
    hidden = ops.build_masks(keys, (h, w), layout="boxes", num_copies=1, seed=seed, box_count=box_count,
                             box_size=box_size)[0]
    if cfg.layout != "none":
        p = cfg.patch_size
        assignment = ops.patch_assignment(keys, (h // p, w // p), layout=cfg.layout, num_copies=cfg.num_copies,
                                          seed=seed)
        copy = ((keys + step) % cfg.num_copies).view(-1, 1, 1)
        in_copy = (assignment == copy).repeat_interleave(p, 1).repeat_interleave(p, 2)
        hidden = torch.where(((keys + step) % 2 == 1).view(-1, 1, 1), in_copy, hidden)
    return target.masked_fill(hidden[:, None], 0.0), target


def _bce(logits: Tensor, real: bool) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, 1.0 if real else 0.0, dtype=torch.float32))


_LOG_EVERY = 10  # steps between loss read-backs (each is a device synchronization)


def train_step(model: "PatchGAN", recon_net, disc_net, opt_r, opt_d, x: Tensor, keys: Tensor, step: int,
               pool: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
    """One alternating update: D on real vs reconstructed patches, then R on eq. 4.

    ``recon_net``/``disc_net`` are the networks or their DDP wrappers. ``pool``: (keys, images) of unlabelled
    images, masked like the normal ones; D also learns the normal images against their reconstructions, and R
    gets ``config.unlabelled_weight`` times the adversarial loss of them (one forward for both batches).
    Returns the losses ``[reconstruction, adversarial, discriminator, unlabelled adversarial]`` as a device
    tensor (no synchronization).
    """
    rec_w, adv_w = model.config.loss_weights
    unl_w = model.config.unlabelled_weight if pool is not None else 0.0
    on_gpu = x.is_cuda
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu)
    z, target = _masked_inputs(x, keys, model, step)
    n = target.shape[0]
    if unl_w > 0:
        z = torch.cat([z, _masked_inputs(pool[1], pool[0], model, step)[0]])
    z = z.contiguous(memory_format=torch.channels_last)  # masked_fill with a broadcast mask returns NCHW
    with autocast:
        out = recon_net(z)
    recon, recon_pool = out[:n], out[n:]
    loss_rec = F.mse_loss(recon.float(), target)
    zero = torch.zeros((), device=x.device)
    loss_d = loss_adv = loss_unl = zero
    if adv_w > 0 or unl_w > 0:
        fakes = ([recon.detach()] if adv_w > 0 else []) + ([recon_pool.detach()] if unl_w > 0 else [])
        with autocast:  # D step: real vs reconstructed patches, one forward for all
            logits = disc_net(torch.cat([target, *[f.to(target.dtype) for f in fakes]]))
        loss_d = 0.5 * (_bce(logits[:n], True) + _bce(logits[n:], False))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        model.discriminator.requires_grad_(False)  # R's adversarial terms: gradients reach R only
        with autocast:
            if adv_w > 0:
                loss_adv = _bce(model.discriminator(recon), True)
            if unl_w > 0:
                loss_unl = _bce(model.discriminator(recon_pool), True)
    loss = rec_w * loss_rec + adv_w * loss_adv + unl_w * loss_unl
    opt_r.zero_grad(set_to_none=True)
    loss.backward()
    opt_r.step()
    model.discriminator.requires_grad_(True)
    return torch.stack([loss_rec.detach(), loss_adv.detach(), loss_d.detach(), loss_unl.detach()])


# ----------------------------------------------------------------------------- validation


def _val_error(model: "PatchGAN", images: Tensor, device: torch.device, batch: int) -> float:
    """Mean masked patch error on normal validation images (lower is better)."""
    cfg = dataclasses.replace(model.score_config, top_weights=(), rest_weight=1.0, patch_weights=None)
    total = 0.0
    for i in range(0, len(images), batch):
        total += float(score_batch(model, images[i:i + batch].to(device), cfg).scores.sum())
    return total / len(images)


#: Additive floor of the position weights, as a share of the mean normal patch error (see _position_weights).
POSITION_FLOOR = 0.1


def _position_weights(errors: Tensor) -> tuple[tuple[float, ...], ...]:
    """Per-position weights ``(1 + f) m / (m_pos + f m)`` (f = ``POSITION_FLOOR``) from the patch
    errors ``[N, Gh, Gw]`` of the normal validation images (unweighted): ``m_pos`` their mean at
    each position, ``m`` its mean over positions. About ``m / m_pos``, so every position's normal
    error counts alike; 1 at an average position; at most ``(1 + f) / f`` = 11 where normal images
    leave almost no error (background)."""
    m_pos = errors.double().mean(0)
    m = m_pos.mean().clamp_min(1e-12)
    w = (1 + POSITION_FLOOR) * m / (m_pos + POSITION_FLOOR * m)
    return tuple(tuple(float(v) for v in row) for row in w.tolist())


def validation_statistics(model: "PatchGAN", images: Tensor, device: torch.device, batch: int) -> None:
    """Sets ``model.error_scales``, ``model.patch_weights`` and ``model.score_stats`` from one
    reconstruction pass over the normal validation images: the unweighted patch errors of both
    measures give the scales (the spread of each measure's scores), the configured measure's errors
    the weights, and its scores (eq. 5, with the weights when ``config.position_weights`` is on) are
    ranked from the same errors."""
    cfg = dataclasses.replace(model.score_config, error="mse", patch_weights=None, neighbour_scales=None)
    plan = cfg.plan(images.shape, device)
    squared, structural = [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device)
        r = score_batch(model, x, cfg)
        squared.append(r.patch_errors.cpu())
        structural.append(patch_scores(plan, "msgms", None, x, r.reconstructions, r.assignment)[1].cpu())
    measures = {"mse": torch.cat(squared), "msgms": torch.cat(structural)}
    spread = [float(ops.rank_patch_errors(e, top_weights=cfg.top_weights, rest_weight=cfg.rest_weight).std())
              if len(e) > 1 else 0.0 for e in measures.values()]
    model.error_scales = tuple(spread) if all(0 < v < float("inf") for v in spread) else None
    if model.config.error == "mse+msgms":
        errors = combine_errors(measures["mse"], measures["msgms"], model.error_scales)
    else:
        errors = measures[model.config.error]
    model.patch_weights = _position_weights(errors)
    cfg = model.score_config
    scores = ops.rank_patch_errors(errors, top_weights=cfg.top_weights, rest_weight=cfg.rest_weight,
                                   patch_weights=cfg.patch_weights_tensor(errors.shape[1:], "cpu"))
    model.score_stats = score_statistics(scores)


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_path(config: TrainConfig) -> Optional[Path]:
    return Path(config.checkpoint_dir) / CHECKPOINT if config.checkpoint_dir else None


def _write_checkpoint(path: Path, step: int, model: "PatchGAN", opt_r, opt_d, best, history,
                      held_out: list[int]) -> None:
    atomic_save({
        "format": _CKPT_FORMAT, "step": step, "schedule": model.config.schedule_fields(), "model": model.state(),
        "opt_r": opt_r.state_dict(), "opt_d": opt_d.state_dict(),
        "best": None if best is None else {"val": best[0], "reconstructor": best[1]}, "history": history,
        "held_out": held_out,  # the validation images' indices: a resumed run must hold out the same ones
    }, path)


def _read_checkpoint(path: Path, config: TrainConfig) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {str(path)!r} is unreadable (corrupt or truncated?): {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CKPT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a patchgan_fast checkpoint of format {_CKPT_FORMAT}")
    theirs, ours = ckpt["schedule"], config.schedule_fields()
    diff = sorted(k for k in set(theirs) | set(ours) if _norm(theirs.get(k)) != _norm(ours.get(k)))
    if diff:
        raise ValueError(
            f"cannot resume from {str(path)!r}: the config differs in {', '.join(f'{k} ({theirs.get(k)!r} -> {ours.get(k)!r})' for k in diff)}"
        )
    return ckpt


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


# ----------------------------------------------------------------------------- the loop


class _Stop:
    """Ctrl-C and SIGTERM while training: SIGTERM sets a flag that ends the run after the current step (with
    a checkpoint). Under DDP the ranks decide together, every ``_LOG_EVERY`` steps (a MAX all-reduce of their
    signals), so a signal that reaches the ranks at different steps stops all of them after the same one and
    rank 0's checkpoint holds it."""

    def __init__(self, world: int, device: torch.device):
        self.world, self.device, self.signal = world, device, None
        main = threading.current_thread() is threading.main_thread()
        self._old = signal.signal(signal.SIGTERM, self._on_term) if main else None

    def _on_term(self, signum, frame):
        self.signal = signum

    def now(self, step: int) -> bool:
        """Whether to stop after ``step``."""
        if self.world == 1:
            return self.signal is not None
        if step % _LOG_EVERY:
            return False
        flag = torch.tensor([self.signal or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signal = int(flag.item()) or None
        return self.signal is not None

    def close(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _input_statistics(src: Source, train_idx: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the training images in [0, 1] (at most 2,048 of them): the models' input
    normalization."""
    sample = ops.to_unit(src.batch(train_idx[:2048]))
    return tuple(sample.mean(dim=(0, 2, 3)).tolist()), tuple(sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


def _check_neighbour_data(config: TrainConfig, n: int, n_val: int, n_train: int) -> None:
    need = 1 if config.neighbours == "patches" else config.neighbour_k  # patches: k is capped at the bank
    if config.neighbours is not None and (n_val < 2 or n_train < need):
        raise ValueError(f"neighbours={config.neighbours!r} needs at least 2 held-out images and "
                         + ("1 training image" if need == 1 else f"neighbour_k = {need} training images")
                         + f", got {n_val} and {n_train} of {n} (val_fraction "
                         f"{config.val_fraction}): give more images, or change val_fraction or neighbour_k")


def _resume(path: Path, model: "PatchGAN", opt_r, opt_d, config: TrainConfig,
            held_out: list[int]) -> tuple[int, Optional[tuple], list]:
    """Loads a checkpoint into the model and optimizers: (step, best, history)."""
    ckpt = _read_checkpoint(path, config)
    check_held_out(path, ckpt, held_out)
    state = ckpt["model"]
    model.reconstructor.load_state_dict(state["reconstructor"])
    model.discriminator.load_state_dict(state["discriminator"])
    model.mean, model.std = tuple(state["mean"]), tuple(state["std"])
    opt_r.load_state_dict(ckpt["opt_r"])
    opt_d.load_state_dict(ckpt["opt_d"])
    best = None if ckpt["best"] is None else (ckpt["best"]["val"], ckpt["best"]["reconstructor"])
    return ckpt["step"], best, list(ckpt["history"])


def _parallel(model: "PatchGAN", world: int, device: torch.device, adversarial: bool):
    """The networks the steps run (their DDP wrappers under torchrun)."""
    if world == 1:
        return model.reconstructor, model.discriminator
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    recon = DDP(model.reconstructor, device_ids=ids)
    return recon, DDP(model.discriminator, device_ids=ids) if adversarial else model.discriminator


class _Run:
    """One training run's state: the model, its optimizers, the step, the best validation error and the
    history, and what :func:`fit` does after each step (log, validate, checkpoint)."""

    def __init__(self, model: "PatchGAN", config: TrainConfig, device: torch.device, rank: int, val_images,
                 pool: bool = False, held_out: Optional[list[int]] = None):
        self.model, self.config, self.device, self.rank, self.val_images = model, config, device, rank, val_images
        self.held_out = held_out or []
        self.pool = pool
        params = dict(lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        self.opt_r = torch.optim.AdamW(model.reconstructor.parameters(), **params)
        self.opt_d = torch.optim.AdamW(model.discriminator.parameters(), **params)
        self.step, self.best, self.history = 0, None, []
        self.ckpt_path = _checkpoint_path(config)

    def resume(self) -> None:
        if self.ckpt_path is None or not self.ckpt_path.is_file():
            return
        self.step, self.best, self.history = _resume(self.ckpt_path, self.model, self.opt_r, self.opt_d, self.config,
                                                     self.held_out)
        if self.rank == 0 and self.config.progress:
            print(f"resuming from {self.ckpt_path} at step {self.step}/{self.config.steps}", file=sys.stderr)

    def save_checkpoint(self) -> None:
        if self.rank == 0 and self.ckpt_path is not None:
            _write_checkpoint(self.ckpt_path, self.step, self.model, self.opt_r, self.opt_d, self.best, self.history,
                              self.held_out)

    def after_step(self, losses: Tensor, first: bool, stopping: bool, bar) -> None:
        """Reads the losses back on logged steps (one synchronization), validates and checkpoints on schedule."""
        cfg, step = self.config, self.step
        checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps
        validate = self.val_images is not None and self.rank == 0 and (step % cfg.val_every == 0 or step == cfg.steps)
        if checkpoint or validate or step % _LOG_EVERY == 0 or first or stopping:
            rec, adv, d, unl = losses.tolist()
            if not math.isfinite(rec + adv + d + unl):
                raise FloatingPointError(
                    f"training diverged by step {step} (losses rec={rec}, adv={adv}, d={d}, unlabelled={unl}); the "
                    "last checkpoint holds the weights before it; lower lr or the adversarial weights"
                )
            record = {"step": step, "rec": rec, "adv": adv, "d": d, **({"unl": unl} if self.pool else {})}
            if validate:
                record["val"] = self._validate()
            self.history.append(record)
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "step"}, refresh=False)
        if checkpoint:
            self.save_checkpoint()

    def _validate(self) -> float:
        """The validation error now; keeps the reconstructor's weights when it is the best so far."""
        self.model.eval()
        val = _val_error(self.model, self.val_images, self.device, self.config.batch_size)
        self.model.train()
        if self.best is None or val < self.best[0]:
            self.best = (val, {k: v.detach().cpu().clone() for k, v in self.model.reconstructor.state_dict().items()})
        return val


def fit(cls, data, config: TrainConfig, *, unlabelled=None, groups=None, resume: bool = False) -> "PatchGAN":
    """Trains a Patch-GAN on normal images (:meth:`PatchGAN.fit <patchgan_fast.PatchGAN.fit>`).

    Args:
        cls: the model class (:class:`~patchgan_fast.PatchGAN`).
        data: Tensor [N, C, H, W] (uint8, or float in [0, 1]) or a map-style dataset of [C, H, W]
            tensors; normal images only.
        config: the run (:class:`TrainConfig`).
        unlabelled: an unlabelled pool in the same form (normal and abnormal images mixed, labels unknown), the
            semi-supervised setting: see ``TrainConfig.unlabelled_weight``. None: normal images only.
        groups: one label per normal image (e.g. the subject a slice belongs to): the validation share is held
            out as whole groups (:func:`~patchgan_fast.models.schedule.validation_split`). None: images at random.
        resume: continue from ``config.checkpoint_dir``'s checkpoint when there is one.

    Returns:
        The trained model in eval mode: the reconstructor with the best validation error (the last one
        without validation data), with the score statistics of the validation images.
    """
    world, rank = distributed()
    device = _device(config)
    src = Source(data, config)
    pool = None if unlabelled is None else Source(unlabelled, config, what="unlabelled images", least=1)
    if pool is not None and pool.channels != src.channels:
        raise ValueError(f"the unlabelled images have {pool.channels} channel(s), the normal images {src.channels}: "
                         "give both the same")
    val_idx, train_idx = validation_split(src.n, config, groups)
    _check_neighbour_data(config, src.n, len(val_idx), len(train_idx))
    mean, std = _input_statistics(src, train_idx)
    torch.manual_seed(config.seed)
    model = cls(config, src.channels, mean, std).to(device)
    model.trained_on = {"normal": src.n, "unlabelled": 0 if pool is None else pool.n}
    val_images = src.batch(val_idx) if len(val_idx) else None
    run = _Run(model, config, device, rank, val_images, pool is not None, val_idx.tolist())
    if resume:
        run.resume()
    _train(run, src, Order(train_idx, config.seed), world, pool)
    model.eval()
    if run.best is not None:
        model.reconstructor.load_state_dict(run.best[1])
    if val_images is not None and rank == 0:
        validation_statistics(model, val_images, device, config.batch_size)
        if config.neighbours is not None:
            bank = train_idx[bank_choice(len(train_idx), config)]
            model.add_neighbours(src.batch(bank), val_images, config.neighbours, config.neighbour_k, config.batch_size)
    model.history = run.history
    if world > 1:
        dist.barrier()
    return model


def _pool_batch(pool: Source, order: Order, step: int, config: TrainConfig, rank: int, world: int, offset: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """(mask keys, images) of the unlabelled images of ``step`` on the device: a seeded stream like the normal
    images', keys offset past theirs so that their masks differ."""
    idx = order.take(positions(step, rank, world, config.batch_size))
    return (idx + offset).to(device), pool.batch(idx).to(device, non_blocking=True)


def _train(run: _Run, src: Source, order: Order, world: int, pool: Optional[Source] = None) -> None:
    """The steps from ``run.step`` to ``config.steps``; an interrupt (Ctrl-C, or SIGTERM after its step) writes
    a checkpoint and raises KeyboardInterrupt."""
    model, config, device, rank = run.model, run.config, run.device, run.rank
    semi = pool is not None and config.unlabelled_weight > 0
    pool_order = Order(torch.arange(pool.n), config.seed + 1) if pool is not None else None
    recon_net, disc_net = _parallel(model, world, device, config.loss_weights[1] > 0 or semi)
    start = run.step
    bar = progress_bar(config.steps, "training", "step", initial=start,
                       enabled=config.progress and rank == 0 and start < config.steps)
    stop = _Stop(world, device)
    model.train()
    try:
        for keys, x in batches(src, order, start, config, rank, world, pin=device.type == "cuda"):
            x = x.to(device, non_blocking=True)
            extra = _pool_batch(pool, pool_order, run.step, config, rank, world, src.n, device) if semi else None
            losses = train_step(model, recon_net, disc_net, run.opt_r, run.opt_d, x, keys.to(device), run.step, extra)
            run.step += 1
            stopping = stop.now(run.step)
            run.after_step(losses, run.step == start + 1, stopping, bar)
            if stopping:
                run.save_checkpoint()
                raise KeyboardInterrupt(f"stopped by signal {stop.signal} at step {run.step}; resume with resume=True")
    except KeyboardInterrupt:
        run.save_checkpoint()
        raise
    finally:
        if bar is not None:
            bar.close()
        stop.close()
