"""Nearest-neighbour feature scores: how far an image's features lie from those of the nearest normal
training images (kNN on learnt features, as DN2).

The reconstruction score (eq. 5) asks whether the model can repair an image from its context; an image
of another kind that it repairs well passes it. The distance to the nearest normal images in the model's
own feature space asks instead whether the image looks like any normal one. A
:class:`~patchgan_fast.PatchGAN` with a feature bank (``TrainConfig.neighbours``, or
:meth:`~patchgan_fast.PatchGAN.add_neighbours`) scores with both, each in units of its normal validation
images' scores, summed (experiments/results/cpu-experiment-fmnist-ten-classes.md).

The ``patches`` space compares places instead of whole images: each pixel's small patch against the nearest
patch near the same place in the bank images most like the query (:func:`patch_distance_maps`), as PatchCore
does with pretrained features, here in the images' own pixels, which suits registered collections (brain MRI
registered to an atlas); the image's distance is the largest mean of that map over a window as wide as a
patch (:func:`peak_window`) away from the outline of its foreground, the outline as wide as the normal
validation images show it must be (:func:`choose_outline`; experiments/results/cpu-experiment-brain-subjects.md).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

#: The feature spaces: ``discriminator``, the output of its last stride-2 stage; ``bottleneck``, the
#: reconstructor's (of the whole, unmasked image); ``discriminator+bottleneck``, both unit vectors side by
#: side (scaled to unit length again), so that neighbours are near in both; ``patches``, the images' own
#: pixels compared place by place (:func:`patch_distance_maps`).
FEATURE_SPACES = ("discriminator", "bottleneck", "discriminator+bottleneck", "patches")

#: Bank images searched per query by default: 5 nearest images in the feature spaces; in ``patches``, the 40
#: bank images most like the query, whose patches are searched place by place.
DEFAULT_K = {"patches": 40}

#: Feature maps are average-pooled to at most this many positions per side, so a bank entry has at most
#: ``channels * POOLED**2`` floats whatever the image size (identity for 32x32 Fashion-MNIST images).
POOLED = 4


def check_space(features: str) -> None:
    if features not in FEATURE_SPACES:
        raise ValueError(f"expected features one of {', '.join(FEATURE_SPACES)}, got {features!r}")


def check_bank(model: nn.Module) -> None:
    """Raises ValueError unless ``model`` has a feature bank (a config with ``neighbour_scales`` needs one)."""
    if getattr(model, "feature_bank", None) is None:
        raise ValueError(f"config.neighbour_scales is set but the model ({type(model).__name__}) has no feature bank; "
                         "give it one (PatchGAN.add_neighbours) or score without neighbour_scales")


def default_k(features: str) -> int:
    """The default ``neighbour_k`` of a feature space (``DEFAULT_K``, else 5)."""
    return DEFAULT_K.get(features, 5)


def bank_k(features: str, k, n: int):
    """The ``k`` a bank of ``n`` images uses when ``k`` is asked for: ``default_k`` for None; in ``patches`` at most
    ``n`` (the most similar k of a smaller bank: all of it). Anything else is returned as it is, for the caller
    to check."""
    k = default_k(features) if k is None else k
    if features == "patches" and isinstance(k, int) and not isinstance(k, bool) and k > n > 0:
        return n
    return k


class Embedding(nn.Module):
    """Normalized images ``[N, C, H, W]`` -> unit-length feature vectors ``[N, D]`` float32 in one of
    ``FEATURE_SPACES`` of a :class:`~patchgan_fast.PatchGAN` (it shares the model's network); in ``patches``,
    the images themselves, float32 in [0, 1] as before normalization, ``[N, C, H, W]``."""

    def __init__(self, model: nn.Module, features: str):
        super().__init__()
        check_space(features)
        self.spaces = features.split("+")
        self.discriminator = model.discriminator if "discriminator" in self.spaces else None
        self.reconstructor = model.reconstructor if "bottleneck" in self.spaces else None
        self.register_buffer("mean", torch.tensor(model.mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(model.std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.spaces == ["patches"]:
            return (x.float() * self.std + self.mean).clamp_(0, 1)
        parts = []
        for space in self.spaces:
            f = self.discriminator.features(x) if space == "discriminator" else self.reconstructor.encode(x)
            f = nn.functional.adaptive_avg_pool2d(f, (min(f.shape[-2], POOLED), min(f.shape[-1], POOLED)))
            parts.append(nn.functional.normalize(f.flatten(1).float(), dim=1))
        return torch.cat(parts, 1) / len(parts) ** 0.5


def distances(query: Tensor, bank: Tensor, k: int, outline: Optional[int] = None, description: str = "ranks",
              bank_description: Optional[Tensor] = None, window: Optional[int] = None) -> Tensor:
    """The distance of each query to the bank: :func:`mean_distances` of feature vectors ``[N, D]``, or
    :func:`patch_distances` of images ``[N, C, H, W]`` (the ``patches`` space, leaving ``outline`` out, the bank
    images searched found by ``description``; ``bank_description`` as in :func:`patch_distance_maps`, ``window``
    as in :func:`patch_distances`)."""
    if bank.dim() == 4:
        return patch_distances(query, bank, k, outline, description, bank_description, window)
    return mean_distances(query, bank, k)


def mean_distances(query: Tensor, bank: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Mean Euclidean distance from every row of ``query`` [N, D] to its ``k`` nearest rows of ``bank``
    [M, D] (float32, on ``query``'s device), ``chunk`` queries at a time."""
    return torch.cat([torch.cdist(query[i:i + chunk], bank).topk(k, dim=1, largest=False).values.mean(1)
                      for i in range(0, len(query), chunk)]) if len(query) else query.new_zeros(0)


def patch_geometry(size: int) -> tuple[int, int, int]:
    """``(p, r, e)`` for images whose shorter side is ``size`` pixels: patches of p x p pixels, searched up to r
    pixels away, and e pixels of a foreground's outline left out where no outline was chosen (a model chooses
    its own, :func:`choose_outline`; on the brain data it chooses e). 1, 1, 1 at 32; 3, 2, 1 at 64 (brain-mri
    --quick, about 10 mm patches and 6 mm of search at 3.25 mm pixels); 5, 4, 2 at 128."""
    return 2 * (size // 64) + 1, max(1, size // 32), max(1, size // 64)


def box_mean(x: Tensor, p: int) -> Tensor:
    """The mean of each pixel's p x p patch of ``x`` [N, C, H, W] (p odd), inside the image, per channel; in
    ``x``'s memory format (channels_last is 3-5x faster on a CPU with many channels)."""
    if p == 1:
        return x
    return nn.functional.avg_pool2d(x, p, 1, p // 2, count_include_pad=False)


def unit_images(images: Tensor) -> Tensor:
    """Images as float32 in [0, 1]: uint8 ones (a stored ``patches`` bank) divided by 255, others as they are."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def bank_images(images: Tensor) -> Tensor:
    """A ``patches`` bank as stored: images in [0, 1] as uint8 (a quarter of float32's size; a difference of at
    most 1/510 per pixel, as in the image files the bank usually comes from)."""
    return (images.float().clamp(0, 1) * 255).round_().to(torch.uint8)


#: How :func:`describe` sees an image when it looks for the bank images most like it: ``ranks``, each pixel as
#: its rank among the image's foreground pixels (:func:`ranks`), blind to contrast; ``pixels``, the intensities
#: as they are (model files written before ranks).
DESCRIPTIONS = ("ranks", "pixels")


def ranks(images: Tensor) -> Tensor:
    """[N, C, H, W] float32: each pixel of each channel of ``images`` (float in [0, 1], or uint8) as the share of
    its image's foreground pixels (:func:`background`'s complement) whose value in that channel is at most its
    own, in (0, 1]; 0 in the background. An increasing change of an image's intensities (a contrast or gamma
    change, a global gain) leaves it as it was."""
    n, c, h, w = images.shape
    fg = ~background(images)
    inside = fg.flatten(1).sum(1).clamp(min=1).view(n, 1, 1)
    if images.dtype == torch.uint8:  # a stored bank: count each of the 256 values (linear, not a sort)
        values = images.flatten(2).long()  # [n, c, hw]
        counts = torch.zeros(n, c, 256, device=images.device)
        counts.scatter_add_(2, values, fg.flatten(1)[:, None].expand(n, c, h * w).float())
        at_most = counts.cumsum(2).gather(2, values)
    else:
        x = images.float()
        flat = torch.where(fg[:, None], x, torch.full_like(x, -1.0)).flatten(2).flatten(0, 1)  # background first
        outside = (~fg).flatten(1).sum(1).view(n, 1, 1)
        at_most = torch.searchsorted(flat.sort(-1).values, flat, right=True).view(n, c, h * w) - outside
    return (at_most.float() / inside).view(n, c, h, w) * fg[:, None]


def describe(images: Tensor, description: str = "ranks") -> Tensor:
    """[N, D] what :func:`patch_distance_maps` uses to find the bank images most like a query: the images (float
    in [0, 1], or uint8) as their :func:`ranks` (``description='ranks'``) or as they are (``'pixels'``),
    average-pooled to at most 16 x 16. Ranks find the slices of like anatomy whatever their contrast: on the
    brain data 0.824 image AUROC against 0.810 for pixels (four draws at 64x64, three of them better), 0.781
    against 0.772 at 128x128 (three of four better; experiments/results/cpu-experiment-brain-subjects.md)."""
    if description not in DESCRIPTIONS:
        raise ValueError(f"expected description one of {', '.join(DESCRIPTIONS)}, got {description!r}")
    h, w = images.shape[-2:]
    x = ranks(images) if description == "ranks" else unit_images(images)
    return nn.functional.adaptive_avg_pool2d(x, (min(h, 16), min(w, 16))).flatten(1)


def patch_distance_maps(query: Tensor, bank: Tensor, k: int, outline: Optional[int] = None,
                        chunk_elements: int = 2**24, description: str = "ranks",
                        bank_description: Optional[Tensor] = None) -> Tensor:
    """[N, H, W] float32: for each pixel of each query image, the mean squared difference between its p x p
    patch and the nearest p x p patch centred up to r pixels away in any of the ``k`` bank images most like
    the query (Euclidean distance of their :func:`describe`), ``(p, r, e) = patch_geometry(min(H, W))``. Pixels
    within ``outline`` (None: e) pixels of the query's background (pixels 0 in every channel: outside a
    skull-stripped brain, a dermoscope's dark corners) are 0 (:func:`leave_outline`): a foreground's outline
    differs between normal images more than most lesions change it (a model chooses its outline on its
    normal validation images, :func:`choose_outline`).

    Args:
        query (Tensor[N, C, H, W]), bank (Tensor[M, C, H, W]): images, float in [0, 1] or uint8, on one device.
        k: bank images searched per query, 1 .. M.
        outline: pixels of the foreground's outline left out, >= 0 (0: the background alone); None: e.
        chunk_elements: most floats of one chunk's working tensor (queries x k x H x W).
        description: how :func:`describe` sees the images, one of ``DESCRIPTIONS``.
        bank_description: ``describe(bank, description)``, where the caller keeps it from call to call (a scorer
            or a model describes its bank once); None: described here.
    """
    if query.dim() != 4 or bank.dim() != 4 or query.shape[1:] != bank.shape[1:]:
        raise ValueError(f"the patches bank holds images of {tuple(bank.shape[1:])} (C, H, W); expected images of that "
                         f"shape, got {tuple(query.shape[1:])}: resize them to the size the model was trained at")
    n, _, h, w = query.shape
    p, r, e = patch_geometry(min(h, w))
    e = e if outline is None else outline
    k = min(k, len(bank))
    out = query.new_zeros((n, h, w), dtype=torch.float32)
    if n == 0:
        return out
    if bank_description is None:
        bank_description = describe(bank, description)
    elif bank_description.shape[0] != len(bank):
        raise ValueError(f"expected bank_description of the {len(bank)} bank images, "
                         f"got {bank_description.shape[0]} rows")
    near = torch.cdist(describe(query, description), bank_description).topk(k, dim=1, largest=False).indices
    padded = nn.functional.pad(bank, (r,) * 4)  # as stored (uint8): each chunk's candidates become float
    step = max(1, chunk_elements // (k * h * w))
    for i in range(0, n, step):
        # the k candidates innermost (then the channels): each offset's k maps are one channels_last batch
        q = unit_images(query[i:i + step]).permute(0, 2, 3, 1)[:, :, :, None]  # [b, H, W, 1, C]
        cand = unit_images(padded[near[i:i + step]].permute(0, 3, 4, 1, 2).contiguous())  # [b, H + 2r, W + 2r, k, C]
        best = None
        for dy in range(2 * r + 1):
            for dx in range(2 * r + 1):
                d = (cand[:, dy:dy + h, dx:dx + w] - q).pow_(2)
                d = d[..., 0] if d.shape[-1] == 1 else d.sum(-1)  # [b, H, W, k]
                d = box_mean(d.permute(0, 3, 1, 2), p).amin(1)  # [b, k, H, W] channels_last -> [b, H, W]
                best = d if best is None else torch.minimum(best, d)
        out[i:i + step] = best
    return leave_outline(out, query, e)


def background(images: Tensor) -> Tensor:
    """[N, H, W] bool: the pixels of ``images`` [N, C, H, W] that are 0 in every channel (outside a skull-stripped
    brain, a dermoscope's dark corners)."""
    return (unit_images(images) <= 0.5 / 255).all(1)


def near_background(images: Tensor, e: int) -> Tensor:
    """[N, H, W] float32, 1 where a pixel of ``images`` [N, C, H, W] is within ``e`` pixels of the
    :func:`background`, the background included; 0 elsewhere."""
    return nn.functional.max_pool2d(background(images)[:, None].float(), 2 * e + 1, 1, e)[:, 0]


def leave_outline(maps: Tensor, images: Tensor, e: int) -> Tensor:
    """``maps`` [N, H, W] of ``images`` with the background and the foreground's outermost ``e`` pixels set to 0."""
    return maps * (1 - near_background(images, e))


def peak_window(size: int) -> int:
    """The side of the window whose largest mean is an image's distance (:func:`peaks`), for images whose
    shorter side is ``size`` pixels: the patch side of :func:`patch_geometry`, at least 3 (3 at 32 and 64, 5 at
    128, 9 at 256): about the same 8-10 mm of brain at 64x64 and 128x128. At 128x128 a 5x5 window gives 0.796
    image AUROC against 0.781 for 3x3 over four draws of the quick subjects, all four better (7x7 0.792, 9x9
    0.770); at 64x64 3x3 is best (0.824 against 0.798 for 5x5). Normal validation images cannot choose it: how
    well it tells foreign patches from them moves by under 0.02 from 1x1 to 9x9, with no common best
    (experiments/results/cpu-experiment-brain-subjects.md)."""
    return max(3, patch_geometry(size)[0])


def peaks(maps: Tensor, window: int = 3) -> Tensor:
    """[N]: the largest value of each map [N, H, W] after a ``window`` x ``window`` mean (``window`` odd)."""
    if not len(maps):
        return maps.new_zeros(0)
    return nn.functional.avg_pool2d(maps[:, None], window, 1, window // 2).flatten(1).amax(1)


def patch_peaks(maps: Tensor, window: int, patch_size: int) -> Tensor:
    """[N, H / P, W / P]: in each ``patch_size`` x ``patch_size`` patch of each map [N, H, W] (H and W multiples of
    P), the largest mean over a ``window`` x ``window`` window centred in it: where :func:`peaks` finds the image's
    distance (its largest value over the patches is :func:`peaks`'s)."""
    return nn.functional.max_pool2d(nn.functional.avg_pool2d(maps[:, None], window, 1, window // 2),
                                    patch_size, patch_size)[:, 0]


def patch_distances(query: Tensor, bank: Tensor, k: int, outline: Optional[int] = None, description: str = "ranks",
                    bank_description: Optional[Tensor] = None, window: Optional[int] = None) -> Tensor:
    """[N] float32: :func:`peaks` of the queries' :func:`patch_distance_maps` with ``window`` (None:
    :func:`peak_window` of the images' size)."""
    window = peak_window(min(query.shape[-2:])) if window is None else window
    return peaks(patch_distance_maps(query, bank, k, outline, description=description,
                                     bank_description=bank_description), window)


def choose_outline(maps: Tensor, images: Tensor, most: int, places: int = 3) -> int:
    """How many pixels of the foreground's outline a ``patches`` bank leaves out, chosen on normal images
    alone: ``maps`` [N, H, W], their :func:`patch_distance_maps` with outline 0, of ``images`` [N, C, H, W].

    From 0, the outline grows by one pixel while the next ring of the foreground (the pixels one farther from
    the background) holds a larger share of the maps' maxima (the places of their ``places`` x ``places`` means'
    maxima) than its share of the pixels left: where normal images peak more often than the size of the place
    explains, normal variation, not a lesion, would set the score. At most ``most``; 0 for images without
    background. Models keep the places 3 x 3 whatever :func:`peak_window`: a wider mean pulls a maximum at the
    rim inwards, out of the ring tested (at 128x128 a 5 x 5 one chooses 1 pixel instead of 2 on three of four draws, and the lesions' image
    AUROC falls from 0.796 to 0.772 over the four).
    """
    e, rows = 0, torch.arange(len(maps), device=maps.device)
    while e < most and len(maps):
        near, nearer = near_background(images, e), near_background(images, e + 1)
        left, ring = (1 - near).flatten(1), (nearer - near).flatten(1)
        place = nn.functional.avg_pool2d((maps * (1 - near))[:, None], places, 1, places // 2).flatten(1).argmax(1)
        share = (ring.sum(1) / left.sum(1).clamp(min=1)).mean()
        if ring[rows, place].mean() <= share:
            break
        e += 1
    return e


def combine(scores: Optional[Tensor], distances: Tensor, scales: tuple[float, float, float, float],
            weights: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """The image score of a model with a feature bank: ``u * (scores - a) / b + v * (distances - c) / d`` with
    ``scales = (a, b, c, d)``, the mean and standard deviation of the normal validation images' eq. 5
    scores and of their distances, and ``weights = (u, v)`` (:func:`choose_weights`). Where ``u`` is 0 eq. 5 adds
    nothing, and ``scores`` may be None (not computed)."""
    a, b, c, d = scales
    u, v = weights
    if scores is None:
        if u:
            raise ValueError(f"eq. 5 weighs {u:g} in this score: its scores are needed, got None")
        return v * (distances - c) / d
    return u * (scores - a) / b + v * (distances.to(scores.device) - c) / d


def combine_patches(errors: Optional[Tensor], places: Tensor, scales: tuple[float, float, float, float],
                    weights: tuple[float, float], patch_weights: Optional[Tensor] = None) -> Tensor:
    """[N, Gh, Gw]: each patch's part of the image score of a model with a ``patches`` bank, in the units of
    :func:`combine`: ``u * errors * patch_weights / b + v * places / d``, ``errors`` eq. 5's patch errors and
    ``patch_weights`` its position weights (None: 1), ``places`` the distance map's :func:`patch_peaks`. Where
    ``u`` is 0 eq. 5 adds nothing, and ``errors`` may be None (not computed). Its largest patch holds the image's
    distance peak when eq. 5 weighs nothing, and otherwise the place where both terms together are largest."""
    _, b, _, d = scales
    u, v = weights
    part = v * places / d
    if u and errors is not None:
        part = part + u * (errors if patch_weights is None else errors * patch_weights) / b
    elif u:
        raise ValueError(f"eq. 5 weighs {u:g} in this score: its patch errors are needed, got None")
    return part


#: The shares of eq. 5 in the image score that :func:`choose_weights` chooses from (the distance gets the rest).
EQ5_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def foreign_patches(images: Tensor, n: int, seed: int = 0) -> Tensor:
    """``n`` synthetic anomalies made of normal ``images`` [M, C, H, W] (M >= 2; uint8, or float in [0, 1]):
    image ``i % M`` with a square of another of them, taken at a random place of that one's foreground,
    blended in (its share 0.3-1) at a random place of its own foreground (pixels not 0 in every channel; all
    pixels where it has none), its side 1/16 to 1/4 of the shorter side (at least 2 pixels). Misplaced normal
    tissue: no lesion model of any collection, so weights chosen on them (:func:`choose_weights`) are not
    chosen for one kind of lesion (as foreign patch interpolation, Tan et al. 2020, and CutPaste, Li et al.
    2021, make training anomalies; here they only weigh two scores). Float32 [n, C, H, W] in [0, 1], seeded."""
    if images.dim() != 4 or len(images) < 2:
        raise ValueError(f"expected at least 2 images [M, C, H, W] to make foreign patches of, got "
                         f"{tuple(images.shape)}")
    g = torch.Generator().manual_seed(seed)
    x = unit_images(images.cpu())
    m, _, h, w = x.shape
    foreground = ~background(x)
    foreground[~foreground.flatten(1).any(1)] = True
    out = x[torch.arange(n) % m].clone()
    lo, hi = max(2, min(h, w) // 16), max(2, min(h, w) // 4)

    def draw(k: int, s: int) -> tuple[int, int]:  # the corner of an s x s square centred on a foreground pixel
        places = torch.nonzero(foreground[k])
        y, z = places[int(torch.randint(len(places), (1,), generator=g))].tolist()
        return min(max(y - s // 2, 0), h - s), min(max(z - s // 2, 0), w - s)

    for i in range(n):
        t, s = i % m, int(torch.randint(lo, hi + 1, (1,), generator=g))
        src = (t + 1 + int(torch.randint(m - 1, (1,), generator=g))) % m
        (ty, tx), (sy, sx) = draw(t, s), draw(src, s)
        share = 0.3 + 0.7 * float(torch.rand(1, generator=g))
        region = out[i, :, ty:ty + s, tx:tx + s]
        keep = foreground[t, ty:ty + s, tx:tx + s]
        region[:, keep] = ((1 - share) * region + share * x[src, :, sy:sy + s, sx:sx + s])[:, keep]
    return out


def changed_pixels(foreign: Tensor, images: Tensor) -> Tensor:
    """[n, H, W] bool: the pixels of ``foreign`` (:func:`foreign_patches` of ``images``) that differ, in any
    channel, from the image each was made from (image ``i % M``): where the pasted square changed it."""
    x = unit_images(images.cpu())
    return (foreign.cpu() != x[torch.arange(len(foreign)) % len(x)]).any(1)


def average_precision(scores: Tensor, truth: Tensor) -> float:
    """The area under the precision-recall curve of ``scores`` [n] against ``truth`` [n] (bool), as
    ``sklearn.metrics.average_precision_score``: precision at each distinct threshold, weighted by the recall
    it adds (ties share one threshold)."""
    order = scores.double().cpu().argsort(descending=True)
    s, positive = scores.double().cpu()[order], truth.cpu()[order].double()
    if not positive.any():
        raise ValueError("average precision needs at least one positive")
    last = torch.ones(len(s), dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the last of each run of equal scores: one threshold
    hits = positive.cumsum(0)[last]
    precision = hits / torch.arange(1, len(s) + 1, dtype=torch.float64)[last]
    recall = hits / hits[-1]
    return float((torch.diff(recall, prepend=recall.new_zeros(1)) * precision).sum())


def map_windows(size: int) -> tuple[int, ...]:
    """The sides :func:`choose_map_window` chooses from for images whose shorter side is ``size``: the odd ones
    from 1 (the map as it is) to a quarter of the size (1 .. 17 at 64x64, 1 .. 33 at 128x128)."""
    return tuple(range(1, size // 4 + 2, 2))


def filled(maps: Tensor, window: int) -> Tensor:
    """[N, H, W]: each pixel of the distance ``maps`` [N, H, W] as the larger of its own value and the mean of the
    ``window`` x ``window`` pixels around it (inside the image); ``window`` 1: the maps as they are.

    Each pixel of a map measures the patch centred on it, so the inside of a region unlike its surroundings but
    flat (a tumour's necrotic core, as dark as the nearby CSF) can match normal tissue while its rim lights up:
    the mean fills it in. A mean alone would also erase whatever is smaller than the window (on the brain data a
    mean as wide as normal data choose, 9 x 9 at 64x64, takes the small lesions' pixel AUPRC from 0.26 to 0.04
    and MS foci's from 0.26 to 0.13 while it raises tumours' from 0.47 to 0.71); the larger of the two keeps
    every pixel the map finds by itself (small 0.26, MS 0.26, tumours 0.61 at 11 x 11;
    experiments/results/cpu-experiment-brain-subjects.md)."""
    if window == 1:
        return maps
    return torch.maximum(maps, box_mean(maps[:, None], window)[:, 0])


def choose_map_window(maps: Tensor, changed: Tensor, inside: Tensor) -> int:
    """The window of :func:`filled` over a ``patches`` model's distance maps in its error maps
    (``PatchGAN.map_window``), chosen on normal data alone: ``maps`` [n, H, W], the distance maps of
    :func:`foreign_patches` pasted into normal validation images, ``changed`` [n, H, W] the pixels the pasting
    changed (:func:`changed_pixels`), ``inside`` [n, H, W] the foreground. Of :func:`map_windows`, the one whose
    filled maps best find the changed pixels among the foreground's (:func:`average_precision`; ties to the
    smaller). The area under the precision-recall curve, unlike the ROC curve's, falls again when the mean
    spreads the evidence past the region: on the brain data the ROC area of foreign patches under a plain mean
    rises up to windows of a quarter of the image, twice the lesions' best."""
    truth = changed[inside]

    def found(w: int) -> float:
        return average_precision(filled(maps.float(), w)[inside], truth)

    return max(map_windows(min(maps.shape[-2:])), key=lambda w: (found(w), -w))


def auroc(normal: Tensor, abnormal: Tensor) -> float:
    """The probability that an ``abnormal`` score [n] exceeds a ``normal`` one [m] (ties count half), in
    O((n + m) log m)."""
    ordered = normal.double().cpu().sort().values
    a = abnormal.double().cpu()
    below = torch.searchsorted(ordered, a, right=False).double()
    ties = torch.searchsorted(ordered, a, right=True).double() - below
    return float((below + 0.5 * ties).mean() / len(ordered))


def choose_weights(scores: Tensor, distances: Tensor, scores_foreign: Tensor, distances_foreign: Tensor
                   ) -> tuple[float, float]:
    """The weights ``(u, v)`` of :func:`combine`, chosen on normal data alone: ``scores``/``distances`` [M] of
    normal validation images, ``scores_foreign``/``distances_foreign`` [n] of :func:`foreign_patches` made of
    them. Of eq. 5's shares ``EQ5_SHARES`` (``(w, 1 - w)``), the one whose summed score (each term in the
    normal images' units) best tells the foreign patches from the normal images (AUROC; ties to the even
    share): a term that cannot tell them apart is left out instead of adding its noise (on the brain data
    eq. 5 at 300 steps is near chance, and the plain sum costs 0.04 image AUROC; experiments/results/
    cpu-experiment-brain-subjects.md)."""
    scores, distances = scores.double().cpu(), distances.double().cpu()
    scales = (float(scores.mean()), float(scores.std()), float(distances.mean()), float(distances.std()))

    def told(w: float) -> float:  # how well the score with eq. 5's share w tells the foreign patches
        normal = combine(scores, distances, scales, (w, 1 - w))
        foreign = combine(scores_foreign.double().cpu(), distances_foreign.double().cpu(), scales, (w, 1 - w))
        return auroc(normal, foreign)

    best = max(EQ5_SHARES, key=lambda w: (told(w), -abs(w - 0.5)))
    return best, 1.0 - best
