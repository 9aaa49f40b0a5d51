"""Adversarial training of the Patch-GAN (eq. 1-4): alternating D and R updates with AdamW.

The schedule is a pure function of (config, step): the data order of every epoch is a seeded
permutation and the masks come from the counter-based masks op, so a run resumed from a checkpoint
continues exactly where it stopped, and under ``torchrun`` each rank reads its own shard of every
global batch. Rank 0 writes the checkpoints; Ctrl-C or SIGTERM writes one before stopping (under DDP
all ranks stop after the same step).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from . import ops
from .config import TrainConfig
from ._runtime import distributed, local_cuda_device, progress_bar
from .model import PatchGAN, atomic_save, score_statistics
from ._reference import rank_patch_errors
from .scoring import combine_errors, patch_scores, score_batch

CHECKPOINT = "checkpoint.pt"
_CKPT_FORMAT = 1


# ----------------------------------------------------------------------------- data


class _Source:
    """Indexable normal images: a Tensor [N, C, H, W] or a map-style dataset of [C, H, W] tensors."""

    def __init__(self, data, config: TrainConfig):
        self.data = data
        if isinstance(data, Tensor):
            ops.check_images(data, "training images")
            self.n, self.channels = data.shape[0], data.shape[1]
            size = tuple(data.shape[-2:])
        else:
            if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
                raise TypeError(f"expected training data as a Tensor [N, C, H, W] or a map-style Dataset, got {type(data).__name__}")
            self.n = len(data)
            if self.n == 0:
                raise ValueError("expected at least one training image, got an empty dataset")
            first = self._item(0)
            self.channels, size = first.shape[0], tuple(first.shape[-2:])
        if size != (config.image_size, config.image_size):
            raise ValueError(
                f"training images are {size[0]}x{size[1]} but TrainConfig.image_size is {config.image_size}; "
                "resize the data or change the config"
            )
        if self.n < 2:
            raise ValueError(f"expected at least 2 training images, got {self.n}")

    def _item(self, i: int) -> Tensor:
        item = self.data[i]
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, Tensor) or item.dim() != 3:
            raise TypeError(f"dataset item {i} must be a Tensor [C, H, W] (or a tuple starting with one), got {type(item).__name__}")
        return item

    def batch(self, indices: Tensor) -> Tensor:
        if isinstance(self.data, Tensor):
            return self.data[indices]
        return torch.stack([self._item(int(i)) for i in indices])


class _Order:
    """Seeded permutation of the training indices per epoch; position p of the endless stream is
    ``perm(p // n)[p % n]``."""

    def __init__(self, indices: Tensor, seed: int):
        self.indices, self.seed, self._perms = indices, seed, {}

    def take(self, positions: Tensor) -> Tensor:
        n = len(self.indices)
        out = torch.empty_like(positions)
        for epoch in positions.div(n, rounding_mode="floor").unique().tolist():
            if epoch not in self._perms:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perms = {epoch: torch.randperm(n, generator=g), **{k: v for k, v in self._perms.items() if k > epoch - 2}}
            sel = positions.div(n, rounding_mode="floor") == epoch
            out[sel] = self.indices[self._perms[epoch][positions[sel] % n]]
        return out


def _positions(step: int, rank: int, world: int, batch: int) -> Tensor:
    start = (step * world + rank) * batch
    return torch.arange(start, start + batch, dtype=torch.int64)


class _StepSampler(torch.utils.data.Sampler):
    """Batch sampler of the schedule: the dataset indices of this rank for steps start..end-1."""

    def __init__(self, order: _Order, start: int, end: int, rank: int, world: int, batch: int):
        self.order, self.start, self.end, self.rank, self.world, self.batch = order, start, end, rank, world, batch

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        for step in range(self.start, self.end):
            yield self.order.take(_positions(step, self.rank, self.world, self.batch)).tolist()


def _batches(src: _Source, order: _Order, start: int, config: TrainConfig, rank: int, world: int, pin: bool):
    """Yields (dataset indices, images) per step from ``start``; datasets decode in DataLoader workers."""
    if isinstance(src.data, Tensor) or config.num_workers == 0:
        for step in range(start, config.steps):
            keys = order.take(_positions(step, rank, world, config.batch_size))
            yield keys, src.batch(keys)
        return
    sampler = _StepSampler(order, start, config.steps, rank, world, config.batch_size)

    def collate(items):
        return torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])

    loader = torch.utils.data.DataLoader(src.data, batch_sampler=sampler, num_workers=config.num_workers,
                                         collate_fn=collate, pin_memory=pin)
    for keys, x in zip(sampler, loader):
        yield torch.tensor(keys, dtype=torch.int64), x


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


def _masked_inputs(x: Tensor, keys: Tensor, model: PatchGAN, step: int) -> tuple[Tensor, Tensor]:
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


def train_step(model: PatchGAN, recon_net, disc_net, opt_r, opt_d, x: Tensor, keys: Tensor, step: int) -> Tensor:
    """One alternating update: D on real vs reconstructed patches, then R on eq. 4.

    ``recon_net``/``disc_net`` are the networks or their DDP wrappers. Returns the losses
    ``[reconstruction, adversarial, discriminator]`` as a device tensor (no synchronization).
    """
    rec_w, adv_w = model.config.loss_weights
    on_gpu = x.is_cuda
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu)
    z, target = _masked_inputs(x, keys, model, step)
    z = z.contiguous(memory_format=torch.channels_last)  # masked_fill with a broadcast mask returns NCHW
    with autocast:
        recon = recon_net(z)
    loss_rec = F.mse_loss(recon.float(), target)
    loss_d = loss_adv = torch.zeros((), device=x.device)
    if adv_w > 0:
        with autocast:  # D step: real vs reconstructed patches, one forward for both
            logits = disc_net(torch.cat([target, recon.detach().to(target.dtype)]))
        n = target.shape[0]
        loss_d = 0.5 * (_bce(logits[:n], True) + _bce(logits[n:], False))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        model.discriminator.requires_grad_(False)  # R's adversarial term: gradients reach R only
        with autocast:
            loss_adv = _bce(model.discriminator(recon), True)
    loss = rec_w * loss_rec + adv_w * loss_adv
    opt_r.zero_grad(set_to_none=True)
    loss.backward()
    opt_r.step()
    model.discriminator.requires_grad_(True)
    return torch.stack([loss_rec.detach(), loss_adv.detach(), loss_d.detach()])


# ----------------------------------------------------------------------------- validation


def _val_error(model: PatchGAN, images: Tensor, device: torch.device, batch: int) -> float:
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


def _validation_statistics(model: PatchGAN, images: Tensor, device: torch.device, batch: int) -> None:
    """Sets ``model.error_scales``, ``model.patch_weights`` and ``model.score_stats`` from one
    reconstruction pass over the normal validation images: the unweighted patch errors of both
    measures give the scales (the spread of each measure's scores), the configured measure's errors
    the weights, and its scores (eq. 5, with the weights when ``config.position_weights`` is on) are
    ranked from the same errors."""
    cfg = dataclasses.replace(model.score_config, error="mse", patch_weights=None, neighbour_scales=None)
    structural_cfg = dataclasses.replace(cfg, error="msgms")
    squared, structural = [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device)
        r = score_batch(model, x, cfg)
        squared.append(r.patch_errors.cpu())
        structural.append(patch_scores(x, r.reconstructions, r.assignment, structural_cfg, None)[1].cpu())
    measures = {"mse": torch.cat(squared), "msgms": torch.cat(structural)}
    spread = [float(rank_patch_errors(e, top_weights=cfg.top_weights, rest_weight=cfg.rest_weight).std())
              if len(e) > 1 else 0.0 for e in measures.values()]
    model.error_scales = tuple(spread) if all(0 < v < float("inf") for v in spread) else None
    if model.config.error == "mse+msgms":
        errors = combine_errors(measures["mse"], measures["msgms"], model.error_scales)
    else:
        errors = measures[model.config.error]
    model.patch_weights = _position_weights(errors)
    cfg = model.score_config
    scores = rank_patch_errors(errors, top_weights=cfg.top_weights, rest_weight=cfg.rest_weight,
                               patch_weights=cfg.patch_weights_tensor(errors.shape[1:], "cpu"))
    model.score_stats = score_statistics(scores)


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_path(config: TrainConfig) -> Optional[Path]:
    return Path(config.checkpoint_dir) / CHECKPOINT if config.checkpoint_dir else None


def _write_checkpoint(path: Path, step: int, model: PatchGAN, opt_r, opt_d, best, history) -> None:
    atomic_save({
        "format": _CKPT_FORMAT, "step": step, "schedule": model.config.schedule_fields(), "model": model.state(),
        "opt_r": opt_r.state_dict(), "opt_d": opt_d.state_dict(),
        "best": None if best is None else {"val": best[0], "reconstructor": best[1]}, "history": history,
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


def validation_split(n: int, config: TrainConfig) -> tuple[Tensor, Tensor]:
    """The indices (validation, training) into ``n`` normal images as :func:`fit` splits them: a
    ``config.val_fraction`` share (at least one image left to train on), drawn with ``config.seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    n_val = min(int(round(n * config.val_fraction)) if config.val_fraction > 0 else 0, n - 1)
    return perm[:n_val], perm[n_val:]


def bank_choice(n: int, config: TrainConfig) -> Tensor:
    """Which of ``n`` training images (positions in fit's training split) go into the feature bank: a
    seeded random ``config.neighbour_bank`` of them (all when there are fewer)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[:config.neighbour_bank]


def fit(data, config: TrainConfig, *, resume: bool = False) -> PatchGAN:
    """Trains a Patch-GAN on normal images.

    Args:
        data: Tensor [N, C, H, W] (uint8, or float in [0, 1]) or a map-style dataset of [C, H, W]
            tensors; normal images only.
        config: the run (:class:`TrainConfig`).
        resume: continue from ``config.checkpoint_dir``'s checkpoint when there is one.

    Returns:
        The trained :class:`PatchGAN` in eval mode: the reconstructor with the best validation error
        (the last one without validation data), with the score statistics of the validation images.
    """
    world, rank = distributed()
    device = _device(config)
    src = _Source(data, config)
    val_idx, train_idx = validation_split(src.n, config)
    n_val = len(val_idx)
    if config.neighbours is not None and (n_val < 2 or len(train_idx) < config.neighbour_k):
        raise ValueError(f"neighbours={config.neighbours!r} needs at least 2 held-out images and neighbour_k = "
                         f"{config.neighbour_k} training images, got {n_val} and {len(train_idx)} of {src.n} (val_fraction "
                         f"{config.val_fraction}): give more images, or change val_fraction or neighbour_k")
    order = _Order(train_idx, config.seed)

    raw = src.batch(train_idx[:2048])
    sample = raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()
    mean = tuple(sample.mean(dim=(0, 2, 3)).tolist())
    std = tuple(sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())

    torch.manual_seed(config.seed)
    model = PatchGAN(config, src.channels, mean, std).to(device)
    on_gpu = device.type == "cuda"
    rec_w, adv_w = config.loss_weights
    opt_r = torch.optim.AdamW(model.reconstructor.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    opt_d = torch.optim.AdamW(model.discriminator.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)

    start, best, history = 0, None, []
    ckpt_path = _checkpoint_path(config)
    if resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = _read_checkpoint(ckpt_path, config)
        state = ckpt["model"]
        model.reconstructor.load_state_dict(state["reconstructor"])
        model.discriminator.load_state_dict(state["discriminator"])
        model.mean, model.std = tuple(state["mean"]), tuple(state["std"])
        opt_r.load_state_dict(ckpt["opt_r"])
        opt_d.load_state_dict(ckpt["opt_d"])
        start, history = ckpt["step"], list(ckpt["history"])
        if ckpt["best"] is not None:
            best = (ckpt["best"]["val"], ckpt["best"]["reconstructor"])
        if rank == 0 and config.progress:
            print(f"resuming from {ckpt_path} at step {start}/{config.steps}", file=sys.stderr)

    recon_net, disc_net = model.reconstructor, model.discriminator
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if on_gpu else None
        recon_net = DDP(model.reconstructor, device_ids=ids)
        if adv_w > 0:
            disc_net = DDP(model.discriminator, device_ids=ids)
    val_images = src.batch(val_idx) if n_val else None

    def save_checkpoint(step: int) -> None:
        if rank == 0 and ckpt_path is not None:
            _write_checkpoint(ckpt_path, step, model, opt_r, opt_d, best, history)

    bar = progress_bar(config.steps, "training", "step", initial=start,
                       enabled=config.progress and rank == 0 and start < config.steps)

    step = start
    stop = {"signal": None}

    def on_term(signum, frame):  # SIGTERM: finish the step, checkpoint, stop
        stop["signal"] = signum

    def stopping() -> bool:
        """Whether to stop after this step. Under DDP the ranks decide together, every _LOG_EVERY
        steps (a MAX all-reduce of their signals), so a signal that reaches the ranks at different
        steps stops all of them after the same one and rank 0's checkpoint holds it."""
        if world == 1:
            return stop["signal"] is not None
        if step % _LOG_EVERY:
            return False
        flag = torch.tensor([stop["signal"] or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop["signal"] = int(flag.item()) or None
        return stop["signal"] is not None

    in_main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, on_term) if in_main_thread else None
    model.train()
    try:
        for keys, x in _batches(src, order, start, config, rank, world, pin=on_gpu):
            x = x.to(device, non_blocking=True)
            keys = keys.to(device)
            losses = train_step(model, recon_net, disc_net, opt_r, opt_d, x, keys, step)
            step += 1
            checkpoint = step % config.checkpoint_every == 0 or step == config.steps
            validate = n_val and rank == 0 and (step % config.val_every == 0 or step == config.steps)
            stop_now = stopping()
            if checkpoint or validate or step % _LOG_EVERY == 0 or step == start + 1 or stop_now:
                rec, adv, d = losses.tolist()  # one synchronization per logged step
                if not math.isfinite(rec + adv + d):
                    raise FloatingPointError(
                        f"training diverged by step {step} (losses rec={rec}, adv={adv}, d={d}); the last checkpoint "
                        "holds the weights before it; lower lr or the adversarial weight"
                    )
                record = {"step": step, "rec": rec, "adv": adv, "d": d}
                if validate:
                    model.eval()
                    record["val"] = _val_error(model, val_images, device, config.batch_size)
                    model.train()
                    if best is None or record["val"] < best[0]:
                        best = (record["val"], {k: v.detach().cpu().clone() for k, v in model.reconstructor.state_dict().items()})
                history.append(record)
                if bar is not None:
                    bar.update(step - bar.n)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "step"}, refresh=False)
            if checkpoint:
                save_checkpoint(step)
            if stop_now:
                save_checkpoint(step)
                raise KeyboardInterrupt(f"stopped by signal {stop['signal']} at step {step}; resume with resume=True")
    except KeyboardInterrupt:
        save_checkpoint(step)
        raise
    finally:
        if bar is not None:
            bar.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)

    model.eval()
    if best is not None:
        model.reconstructor.load_state_dict(best[1])
    if n_val and rank == 0:
        _validation_statistics(model, val_images, device, config.batch_size)
        if config.neighbours is not None:
            bank = train_idx[bank_choice(len(train_idx), config)]
            model.add_neighbours(src.batch(bank), val_images, config.neighbours, config.neighbour_k, config.batch_size)
    model.history = history
    if world > 1:
        dist.barrier()
    return model


def train(data, config: TrainConfig, out: str | os.PathLike, *, resume: bool = False) -> PatchGAN:
    """Trains and writes the model file (rank 0); the entry point of ``patchgan-fast train``."""
    model = fit(data, config, resume=resume)
    world, rank = distributed()
    if rank == 0:
        model.save(out)
    if world > 1:
        dist.barrier()
    return model
