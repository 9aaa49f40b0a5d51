"""What training reads, step by step: the normal images (a Tensor or a Dataset), the validation split,
and the seeded order of the endless stream of batches, a pure function of (config, step) so that a
resumed run, or rank r of a DDP run, reads exactly the batches it would have."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..ops import check_images
from .config import TrainConfig


class Source:
    """Indexable images: a Tensor [N, C, H, W] or a map-style dataset of [C, H, W] tensors; ``what`` names them
    in errors, and at least ``least`` are needed. ``config`` needs only ``image_size``."""

    def __init__(self, data, config: TrainConfig, what: str = "training images", least: int = 2):
        self.data = data
        if isinstance(data, Tensor):
            check_images(data, what)
            self.n, self.channels = data.shape[0], data.shape[1]
            size = tuple(data.shape[-2:])
        else:
            if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
                raise TypeError(f"expected {what} as a Tensor [N, C, H, W] or a map-style Dataset, got {type(data).__name__}")
            self.n = len(data)
            if self.n == 0:
                raise ValueError(f"expected at least {least} of the {what}, got an empty dataset")
            first = self._item(0)
            self.channels, size = first.shape[0], tuple(first.shape[-2:])
        if size != (config.image_size, config.image_size):
            raise ValueError(
                f"{what} are {size[0]}x{size[1]} but the config's image_size is {config.image_size}; "
                "resize the data or change the config"
            )
        if self.n < least:
            raise ValueError(f"expected at least {least} of the {what}, got {self.n}")

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


class Order:
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


def positions(step: int, rank: int, world: int, batch: int) -> Tensor:
    start = (step * world + rank) * batch
    return torch.arange(start, start + batch, dtype=torch.int64)


class _StepSampler(torch.utils.data.Sampler):
    """Batch sampler of the schedule: the dataset indices of this rank for steps start..end-1."""

    def __init__(self, order: Order, start: int, end: int, rank: int, world: int, batch: int):
        self.order, self.start, self.end, self.rank, self.world, self.batch = order, start, end, rank, world, batch

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        for step in range(self.start, self.end):
            yield self.order.take(positions(step, self.rank, self.world, self.batch)).tolist()


def batches(src: Source, order: Order, start: int, config: TrainConfig, rank: int, world: int, pin: bool):
    """Yields (dataset indices, images) per step from ``start``; datasets decode in DataLoader workers."""
    if isinstance(src.data, Tensor) or config.num_workers == 0:
        for step in range(start, config.steps):
            keys = order.take(positions(step, rank, world, config.batch_size))
            yield keys, src.batch(keys)
        return
    sampler = _StepSampler(order, start, config.steps, rank, world, config.batch_size)

    def collate(items):
        return torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])

    loader = torch.utils.data.DataLoader(src.data, batch_sampler=sampler, num_workers=config.num_workers,
                                         collate_fn=collate, pin_memory=pin)
    for keys, x in zip(sampler, loader):
        yield torch.tensor(keys, dtype=torch.int64), x


def validation_split(n: int, config: TrainConfig, groups: Optional[Sequence] = None) -> tuple[Tensor, Tensor]:
    """The indices (validation, training) into ``n`` normal images as :func:`fit` splits them: a
    ``config.val_fraction`` share (at least one image left to train on), drawn with ``config.seed``.

    ``groups`` (one label per image, e.g. the subject of each slice): whole groups are held out, in a seeded
    order, until they hold the share (at least one group, and one left to train on), so the validation
    scores, and the flag threshold taken from them, describe images of unseen subjects, not other slices
    of the training subjects.

    Raises:
        ValueError: ``groups`` not one label per image, or fewer than two groups.
    """
    gen = torch.Generator().manual_seed(config.seed)
    if groups is None:
        perm = torch.randperm(n, generator=gen)
        n_val = min(int(round(n * config.val_fraction)) if config.val_fraction > 0 else 0, n - 1)
        return perm[:n_val], perm[n_val:]
    labels = groups.tolist() if isinstance(groups, Tensor) else list(groups)
    if len(labels) != n:
        raise ValueError(f"expected one group label per image ({n}), got {len(labels)}")
    sizes = Counter(labels)
    names = sorted(sizes, key=repr)
    if len(names) < 2:
        raise ValueError(f"expected at least two groups to hold some out for validation, got {len(names)}")
    held, count = set(), 0
    for i in torch.randperm(len(names), generator=gen).tolist()[:-1]:  # the last group always trains
        if count >= n * config.val_fraction:
            break
        held.add(names[i])
        count += sizes[names[i]]
    val = torch.tensor([i for i, g in enumerate(labels) if g in held], dtype=torch.long)
    train = torch.tensor([i for i, g in enumerate(labels) if g not in held], dtype=torch.long)
    return val, train


def bank_choice(n: int, config: TrainConfig) -> Tensor:
    """Which of ``n`` training images (positions in fit's training split) go into the feature bank: a
    seeded random ``config.neighbour_bank`` of them (all when there are fewer)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[:config.neighbour_bank]


def check_held_out(path: Path, ckpt: dict, held_out: list[int]) -> None:
    """Raises ValueError when the checkpoint's run held out other validation images than this one (other
    ``groups``, other data); checkpoints written before they were recorded are not checked."""
    theirs = ckpt.get("held_out")
    if theirs is not None and list(theirs) != held_out:
        raise ValueError(f"cannot resume from {str(path)!r}: its run held out other validation images ({len(theirs)}) "
                         f"than this one does ({len(held_out)}); the data or the groups (e.g. --group-by) differ. "
                         "Give the same, or start over in another checkpoint folder")
