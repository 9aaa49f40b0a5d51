"""The fast scoring path: :class:`Scorer` scores many batches with one model, as fast as the device allows.

Per batch: uint8 images go to the device from pinned memory without blocking; the fused masks op writes
the K masked copies in the model's dtype and memory format; the reconstructor (a private channels_last
copy, bf16 on CUDA) runs on chunks of images, all K copies of a chunk in one forward, so
memory stays bounded for any batch size; the fused Triton kernel reads the K reconstructions in
their own dtype and returns the ranked scores (with ``error='msgms'`` the in-filled image is gathered,
its structural error map computed in PyTorch, then reduced per patch and ranked by the map kernel). A
chunk's patch assignment is computed once, for the masks op and the kernel. No copy of the
reconstructions is ever made, not even of the CUDA graph's output buffer: each chunk's are scored before
the next chunk replays the graph. A model with a feature bank (``config.neighbour_scales``) also embeds each chunk's
unmasked images with a private fp32 copy of its feature network and adds their nearest-neighbour
distances (:mod:`patchgan_fast.scoring.neighbours`); with a ``patches`` bank the distance maps also give each patch's
part of the score (the patch errors returned), and a score that weighs eq. 5 0 reconstructs nothing.

On CUDA the reconstructor is captured with CUDA graphs through ``torch.compile(mode='reduce-overhead')``
(chunks are padded to one shape, so it compiles once); when compilation fails, the scorer warns once
and runs eagerly. Scores equal :func:`score_batch`'s (bit for bit in fp32 on the CPU, within float
rounding with a feature bank, whose network sees other batch sizes; within bf16 rounding on the GPU,
see ``tests/test_pipeline.py``).

    scorer = Scorer(model)                 # PatchGAN or any [N, C, H, W] -> [N, C, H, W] module
    scores, patch_errors = scorer(images)  # uint8 [B, C, H, W], on the CPU or the device
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from ..ops import Plan
from ..ops.checks import check_keys, check_model_output, raise_if_not_finite
from .config import ScoreConfig, default_forward_batch
from .errors import patch_scores
from .neighbours import (DESCRIPTIONS, Embedding, check_bank, combine, combine_patches, describe, distances,
                         patch_distance_maps, patch_peaks, peak_window)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("auto", "none", "compile", "cudagraphs")


class Scorer:
    """Scores batches with one model through the fast path (see the module docstring).

    Args:
        model: a :class:`~patchgan_fast.PatchGAN` or any module mapping ``[N, C, H, W] -> [N, C, H, W]``.
            The scorer runs a private copy; the model itself is never changed.
        config: masking and ranking; default ``model.score_config``, else ``ScoreConfig()``.
        device: where to score; default the model's device.
        precision: ``'auto'`` (bf16 on CUDA, fp32 elsewhere), ``'fp32'``, ``'bf16'`` or ``'fp16'``:
            the dtype of the reconstructor's weights and of the masked copies.
        compile: ``'auto'`` (``'cudagraphs'`` on CUDA, ``'none'`` elsewhere), ``'none'`` (eager),
            ``'compile'`` (``torch.compile``) or ``'cudagraphs'`` (``torch.compile`` with CUDA graphs).
        forward_batch: most images per reconstructor call (K copies of ``forward_batch // K``
            images); default :func:`~patchgan_fast.scoring.default_forward_batch` (on CUDA two images per SM,
            so that the score kernel runs once per chunk, one program per image; 64 copies elsewhere).

    Attributes:
        source: the model it was built from.
        compiled: whether the reconstructor runs compiled (False after a fallback).
        fallback_reason: why compilation was abandoned, or None.
    """

    def __init__(
        self,
        model: nn.Module,
        config: Optional[ScoreConfig] = None,
        *,
        device: Optional[str | torch.device] = None,
        precision: str = "auto",
        compile: str = "auto",
        forward_batch: Optional[int] = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected the model as a torch.nn.Module, got {type(model).__name__}")
        if config is None:
            config = getattr(model, "score_config", None) or ScoreConfig()
        if not isinstance(config, ScoreConfig):
            raise TypeError(f"expected config as a ScoreConfig, got {type(config).__name__}")
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected auto, {', '.join(PRECISIONS)}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {compile!r}; expected one of {', '.join(COMPILE_MODES)}")
        if forward_batch is not None and (not isinstance(forward_batch, int) or forward_batch < 1):
            raise ValueError(f"expected forward_batch a positive int, got {forward_batch!r}")
        params = [p for p in model.parameters() if p.is_floating_point()]
        if device is None:
            device = params[0].device if params else torch.device("cpu")
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        self.dtype = PRECISIONS[precision] if precision != "auto" else (torch.bfloat16 if on_gpu else torch.float32)
        if compile == "cudagraphs" and not on_gpu:
            raise ValueError(f"compile='cudagraphs' needs a CUDA device, got {self.device}")
        self.compile_mode = ("cudagraphs" if on_gpu else "none") if compile == "auto" else compile
        net = getattr(model, "reconstructor", model)  # a PatchGAN scores with its reconstructor only
        net = copy.deepcopy(net).to(self.device).eval().requires_grad_(False)
        net = net.to(dtype=self.dtype, memory_format=torch.channels_last)  # faster on CPUs (oneDNN) and GPUs alike
        self.net = net
        self.source = model
        self.config = config
        self.forward_batch = forward_batch or default_forward_batch(self.device, config.num_copies)
        self.compiled = self.compile_mode != "none"
        self.fallback_reason: Optional[str] = None
        self._run = self._compiled() if self.compiled else self.net
        self._plans: dict[tuple[int, int, int], Plan] = {}  # per image shape (C, H, W)
        self._neighbours = None
        if config.neighbour_scales is not None:  # eq. 5 + nearest-neighbour distance: the feature net in fp32
            check_bank(model)
            embed = copy.deepcopy(Embedding(model, model.config.neighbours)).to(self.device).eval().requires_grad_(False)
            bank = model.feature_bank.to(self.device)
            description = getattr(model, "patch_description", None) or DESCRIPTIONS[0]
            described = describe(bank, description) if bank.dim() == 4 else None  # a patches bank: once, not per chunk
            window = getattr(model, "patch_window", None)
            if bank.dim() == 4 and window is None:
                window = peak_window(min(bank.shape[-2:]))
            self._neighbours = (embed, bank, model.config.neighbour_k, getattr(model, "patch_outline", None),
                                description, described, window)
        #: whether the score has a ``patches`` term: its patch errors are then each patch's part of the score
        #: (:func:`~patchgan_fast.scoring.neighbours.combine_patches`), the position weights in them
        self.patches = self._neighbours is not None and self._neighbours[1].dim() == 4
        #: whether eq. 5 counts in the score: a ``patches`` score that weighs it 0 reconstructs nothing (at 128x128
        #: the brain models' reconstructions are about 40 % of their scoring time)
        self.reconstructs = not (self.patches and config.neighbour_weights[0] == 0)

    def _compiled(self):
        mode = "reduce-overhead" if self.compile_mode == "cudagraphs" else None
        return torch.compile(self.net, mode=mode, dynamic=False, fullgraph=False)

    @property
    def chunk(self) -> int:
        """Images per reconstructor call."""
        return max(1, self.forward_batch // self.config.num_copies)

    def to_device(self, images: Tensor) -> Tensor:
        """Moves a CPU batch to the scorer's device, through pinned memory and without blocking."""
        if images.device == self.device:
            return images
        if self.device.type == "cuda" and images.device.type == "cpu":
            if not images.is_pinned():
                images = images.pin_memory()
            return images.to(self.device, non_blocking=True)
        return images.to(self.device)

    def _forward(self, masked: Tensor) -> Tensor:
        if self.compiled:
            try:
                if self.compile_mode == "cudagraphs":
                    # each call is a new inference step; the graph's output buffer is overwritten by its next
                    # replay, so a chunk's reconstructions are consumed (scored) before the next chunk runs, and
                    # never copied
                    torch.compiler.cudagraph_mark_step_begin()
                    return self._run(masked)
                return self._run(masked)
            except Exception as exc:  # compilers fail in many ways; eager always works
                self.compiled, self.fallback_reason = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
                warnings.warn(f"patchgan_fast.Scorer: torch.compile failed, scoring eagerly ({self.fallback_reason})",
                              RuntimeWarning, stacklevel=3)
        return self.net(masked)

    def __call__(
        self, images: Tensor, keys: Optional[Tensor] = None, *, check_finite: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Scores a batch.

        Args:
            images (Tensor[B, C, H, W]): uint8 (or float in [0, 1]), on the CPU or the scorer's device.
            keys (Tensor[B] int64, optional): per-image mask keys (layout ``'random'``); default zeros.
            check_finite: raise on NaN/inf scores (a diverged model); this waits for the device, so
                pipelined callers pass False and check the scores when they read them back.

        Returns:
            (scores Tensor[B] float32, patch_errors Tensor[B, Gh, Gw] float32), on the scorer's device; with a
            ``patches`` term in the score the patch errors are each patch's part of it (``self.patches``).
        """
        cfg = self.config
        ops.check_images(images)
        b = images.shape[0]
        if keys is None:
            keys = torch.zeros(b, dtype=torch.int64)
        check_keys(keys, b)
        plan = self.plan(images.shape)
        images, keys = self.to_device(images), self.to_device(keys)
        n = self.chunk
        scores, errors = [], []
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with on_device, torch.inference_mode():  # the scorer's GPU, whichever is current
            for i in range(0, b, n):
                x, kx = images[i:i + n], keys[i:i + n]
                m = len(x)
                if self.compiled and self.reconstructs and m < n:  # a compiled graph sees one chunk shape only:
                    x = torch.cat([x, x[-1:].expand(n - m, -1, -1, -1)])  # pad the last chunk
                    kx = torch.cat([kx, kx[-1:].expand(n - m)])
                s = e = None
                if self.reconstructs:
                    assignment = ops.assign_with(plan, kx)  # once per chunk: the masks op and the kernel share it
                    recon = self._reconstruct(ops.mask_with(plan, x, kx, assignment))
                    s, e = patch_scores(plan, cfg.error, cfg.error_scales, x, recon, assignment)
                if self.patches:
                    places = self._places(x)
                    d = places.flatten(1).amax(1)
                    e = combine_patches(e, places, cfg.neighbour_scales, cfg.neighbour_weights, plan.patch_weights)
                    s = combine(s, d, cfg.neighbour_scales, cfg.neighbour_weights)
                elif self._neighbours is not None:
                    s = combine(s, self._distances(x), cfg.neighbour_scales, cfg.neighbour_weights)
                scores.append(s[:m])
                errors.append(e[:m])
        scores, errors = torch.cat(scores), torch.cat(errors)
        if check_finite:
            raise_if_not_finite(scores)
        return scores, errors

    def plan(self, shape) -> Plan:
        """The checked :class:`~patchgan_fast.ops.Plan` for images of ``shape`` on the scorer's device (made
        once per shape): channels_last copies in the scorer's precision."""
        shape = tuple(int(v) for v in tuple(shape)[-3:])
        if shape not in self._plans:
            config = dataclasses.replace(self.config, dtype=self.dtype, channels_last=True)
            self._plans[shape] = config.plan(shape, self.device)
        return self._plans[shape]

    # The stages of a chunk (also timed one by one in benchmarks/sweep_pipeline.py): ops.assign_with, ops.mask_with,
    # _reconstruct, errors.patch_scores.

    def _reconstruct(self, masked: Tensor) -> Tensor:
        """[K, n, C, H, W] reconstructions of the masked copies."""
        k, n = masked.shape[:2]
        out = self._forward(masked.flatten(0, 1))
        check_model_output(out, (k * n, *masked.shape[2:]), k)
        return out.unflatten(0, (k, n))

    def _distances(self, x: Tensor) -> Tensor:
        """[n] mean distances of the images' features to their nearest in the model's feature bank."""
        embed, bank, k, outline, description, described, window = self._neighbours
        return distances(embed(ops.normalize(x, self.config.mean, self.config.std)), bank, k, outline, description,
                         described, window)

    def _places(self, x: Tensor) -> Tensor:
        """[n, Gh, Gw] :func:`~patchgan_fast.scoring.neighbours.patch_peaks` of the images' patch distance maps
        against a ``patches`` bank: their largest value is the images' distance."""
        embed, bank, k, outline, description, described, window = self._neighbours
        maps = patch_distance_maps(embed(ops.normalize(x, self.config.mean, self.config.std)), bank, k, outline,
                                   description=description, bank_description=described)
        return patch_peaks(maps, window, self.config.patch_size)

    def top_patches(self, errors: Tensor) -> Tensor:
        """[B] int64: the index (row-major in the patch grid) of each image's top patch, from the patch errors
        [B, Gh, Gw] this scorer returned: the largest error times its position weight (eq. 5 ranks it first), or
        with a ``patches`` term the largest part of the score
        (:func:`~patchgan_fast.scoring.neighbours.combine_patches`, the weights already in)."""
        weights = None if self.patches else self.config.patch_weights_tensor(tuple(errors.shape[-2:]), errors.device)
        return (errors if weights is None else errors * weights).flatten(1).argmax(1)


class BatchQueue:
    """Feeds a :class:`Scorer` and hands results back one batch late, so the host decodes and stacks
    batch i+1 while the device scores batch i.

    Images are stacked into one of two pinned uint8 staging buffers (on CUDA), copied to the device
    without blocking, scored, and the scores and top-patch indices copied back without blocking; a
    batch's results are read (and checked for NaN/inf) only when the next batch has been submitted.
    A staging buffer is reused two batches later, after its batch's results were read, so its
    transfer has finished.

    Args:
        scorer: the :class:`Scorer`.
        batch_size: most images per batch.
        shape: (C, H, W) of every image.
    """

    def __init__(self, scorer: Scorer, batch_size: int, shape: tuple[int, int, int]):
        pinned = scorer.device.type == "cuda"
        self.scorer = scorer
        self.buffers = [torch.empty((batch_size, *shape), dtype=torch.uint8, pin_memory=pinned) for _ in range(2)]
        self.turn = 0
        self.waiting = None

    def submit(self, images: list[Tensor], keys: list[int], meta) -> Optional[tuple]:
        """Queues one batch (uint8 ``[C, H, W]`` tensors, their mask keys, anything the caller wants
        back) and returns the previous batch's ``(meta, scores [B], top_patch [B])`` on the CPU, or None;
        the top patch is :meth:`Scorer.top_patches`'."""
        buf = self.buffers[self.turn][: len(images)]
        self.turn ^= 1
        torch.stack(images, out=buf)
        scores, errors = self.scorer(buf, torch.tensor(keys, dtype=torch.int64), check_finite=False)
        top = self.scorer.top_patches(errors)
        on_gpu = scores.device.type == "cuda"
        host = scores.to("cpu", non_blocking=on_gpu), top.to("cpu", non_blocking=on_gpu)
        event = None
        if on_gpu:  # recorded on the scorer's device's stream, whichever device is current
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(scores.device))
        previous, self.waiting = self.waiting, (meta, host, event)
        return self._read(previous)

    def flush(self) -> Optional[tuple]:
        """The last submitted batch's results, or None."""
        previous, self.waiting = self.waiting, None
        return self._read(previous)

    @staticmethod
    def _read(item) -> Optional[tuple]:
        if item is None:
            return None
        meta, (scores, top), event = item
        if event is not None:
            event.synchronize()
        raise_if_not_finite(scores)
        return meta, scores, top
