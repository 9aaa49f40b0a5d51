"""Experiment (issue 26): more levers on the ``patches`` distance, each from normal data alone, none shipped.

Looking at the normal test slices whose maps peak highest (seed 0) shows one test subject's washed-out contrast
(gamma and bias) in five of the top six, and the lesions missed most are large solid tumours about as dark as grey
matter, whose 3x3 patches inside find grey-matter matches within the search window. So, on the quick setting
(64x64; 10 bank subjects, 2 validation, 6 test; the package's distance: patch 3, radius 2, outline 1, 40 slices):

- ``quantiles``: every slice's intensities mapped piecewise linearly (its foreground's 1st, 10th, ..., 90th, 99th
  percentiles, as Nyul-Udupa standardization) onto the mean percentiles of its k most similar bank slices; the
  query only, or the bank too (each bank slice onto its k most similar other bank slices).
- ``noise``: the map over the query's noise variance (a robust estimate: the median absolute response of the
  3x3 Laplacian-like kernel inside the brain, Immerkaer 1996), or less twice it; the images smoothed 1-2-1 first.
- ``scales``: patch 5, patch 7, patch 3 at half resolution, and each combined with patch 3 (sum or max of the
  scores in units of the validation slices').
- ``align``: each of the 40 bank slices affinely registered onto the query (60 Adam steps on the squared
  difference of 1-pixel-blurred images) before the search, with radius 1 and 2.
- ``statistics``: the image's score from the same map: largest pixel, largest 5x5 mean, mean of the top 4/10/20
  pixels, the square root of the map, the peak over a quantile of the image's own map (self-normalized: a subject
  whose contrast matches the bank badly raises its whole map).
- ``nearest``: each pixel's distance as the mean of its best patch in each of the m bank slices where it is
  best (m = 2, 3, 5, 10; the package's m = 1), a k-nearest-neighbour rather than a nearest-neighbour distance.
- ``normative``: each pixel of the map in units of what normal anatomy gives there: every bank slice's own map
  against the bank without its subject (leave one subject out), and for a query the per-pixel mean (and spread)
  of those maps of its k most similar bank slices; the map over that mean plus a floor, or as a z-score.
- ``context``: each image given a second channel, w x the c x c mean of its foreground around each pixel, so that
  a patch only matches where its surroundings are as bright (a large tumour's grey-matter-dark inside matches
  cortex patches; it should not match cortex whose surroundings hold white matter).
- ``coherent``: each pixel's best patch per bank slice averaged over a c x c window of that slice before the best
  slice is taken: a neighbourhood must be matched by one slice, not pieced together from many (offsets stay free).
- ``augment``: the bank with copies of itself at other contrasts (gamma) and bias fields, the normal variation that
  makes the highest normal maxima (the washed-out subject).
- ``describe``: the 40 bank slices searched chosen by a description blind to contrast: the pooled ranks of the
  pixels (any increasing intensity change gives the same; the package's since this lever, ``neighbours.ranks``),
  against the pixels as they are (the package's before), the ranks pooled to 8 x 8, or the foreground's shape alone.
  Every other lever's "package's distance" finds its slices by ranks since then (by pixels when it was recorded).
- ``deform``: each query's k most similar bank slices deformably registered onto it (an affine map and a smooth
  displacement on a coarse lattice, bicubic, fitted by Adam on blurred images; squared or robust Charbonnier loss),
  then the 3x3 squared difference to each (searched within radius 0 or 1): the per-pixel minimum, mean of the two
  smallest or median over the k. A smooth field cannot piece a lesion together from normal patches the way a free
  per-pixel search can.
- ``predict``: each pixel predicted as the mean of the centres of the m bank patches whose surroundings (p x p,
  centre left out) or whole patches are nearest its own; the map the 3x3 mean of the squared residual, alone and
  summed with the package's distance in validation units (the bank's noise averaged away by m).
- ``window``: the image's distance as the largest w x w mean of its map (w = 1 .. 9; the package's 3 before it
  grew with the size, now :func:`peak_window`, 5 at 128x128); how well each window tells foreign patches from
  the validation slices; and the outline chosen with 5x5 places instead of 3x3.
- ``stack``: intensity standardization (Q, percentiles to the 10 most similar bank slices, bank too), the
  context channel (C, 9 x 9, weight 1) and the leave-one-subject-out units (N, z-score, 40 slices) together.

    python experiments/brain_subjects_distance_levers.py LEVER [--seeds 0,1,2,3]   # 20 s to 2 min per seed

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse
import time

import torch
import torch.nn.functional as F
from brain_subjects_levers import report, smoothed_max

from patchgan_fast import TrainConfig
from patchgan_fast.data.datasets.brain_subjects import QUICK, load_brain_subjects
from patchgan_fast.models.schedule import validation_split
from patchgan_fast.scoring import neighbours as nb

LEVELS = torch.tensor([0.01] + [i / 10 for i in range(1, 10)] + [0.99])


def quantiles(x):
    return torch.stack([torch.quantile(im[im > 0], LEVELS) for im in x])


def interp(x, xp, fp):
    """Piecewise linear through (xp, fp), extended linearly past the ends."""
    i = torch.searchsorted(xp.contiguous(), x.contiguous()).clamp(1, len(xp) - 1)
    return fp[i - 1] + (x - xp[i - 1]) * (fp[i] - fp[i - 1]) / (xp[i] - xp[i - 1]).clamp(min=1e-6)


def standardize(x, q, target):
    out = x.clone()
    for n in range(len(x)):
        fg = x[n] > 0
        out[n][fg] = interp(x[n][fg], q[n], target[n]).clamp(0, 1)
    return out


def noise_sd(x):
    kernel = torch.tensor([[1., -2, 1], [-2, 4, -2], [1, -2, 1]])[None, None]
    c = F.conv2d(x, kernel, padding=1)[:, 0].abs()
    inner = nb.near_background(x, 2) == 0
    return torch.stack([c[i][inner[i]].median() for i in range(len(x))]) / (0.6745 * 6)


def smooth(x):
    g = torch.tensor([0.25, 0.5, 0.25])
    k, fg = (g[:, None] * g[None])[None, None], (x > 0).float()
    return F.conv2d(x, k, padding=1) / F.conv2d(fg, k, padding=1).clamp(min=1e-6) * fg


def maps_at(query, bank, p, r, pool=1):
    """The package's maps with patch p and radius r (outline 1), at 1/pool resolution (scaled back up)."""
    original = nb.patch_geometry
    nb.patch_geometry = lambda size: (p, r, 1)
    try:
        if pool == 1:
            return nb.patch_distance_maps(query, bank, 40, 1)
        m = nb.patch_distance_maps(F.avg_pool2d(query, pool), F.avg_pool2d(bank, pool), 40, 1)
        return nb.leave_outline(F.interpolate(m[:, None], scale_factor=pool, mode="nearest")[:, 0], query, 1)
    finally:
        nb.patch_geometry = original


def blur(x, s=1.0):
    t = torch.arange(-3, 4.0)
    g = torch.exp(-t**2 / (2 * s * s))
    g = g / g.sum()
    return F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1), padding=(3, 0)), g.view(1, 1, 1, -1), padding=(0, 3))


def align(q, cand, steps=60, lr=0.01):
    theta = torch.eye(2, 3).repeat(len(cand), 1, 1).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    qb, cb = blur(q), blur(cand)
    for _ in range(steps):
        warped = F.grid_sample(cb, F.affine_grid(theta, cand.shape, align_corners=False), align_corners=False)
        loss = (warped - qb).pow(2).mean() * len(cand)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return F.grid_sample(cand, F.affine_grid(theta, cand.shape, align_corners=False), align_corners=False)


def best_per_candidate(q, cand, p, r):
    """[b, k, H, W]: for each pixel of ``q`` [b, C, H, W], the mean squared difference of its p x p patch to the
    nearest p x p patch centred up to r pixels away in each of its k candidates ``cand`` [b, k, C, H, W]."""
    h, w = q.shape[-2:]
    padded, q, best = F.pad(cand, (r,) * 4), q[:, None], None
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            d = (padded[..., dy:dy + h, dx:dx + w] - q).pow(2).sum(2)
            d = nb.box_mean(d.flatten(0, 1)[:, None], p).view(d.shape)
            best = d if best is None else torch.minimum(best, d)
    return best


def aligned_maps(query, bank, r, registered):
    near = torch.cdist(nb.describe(query), nb.describe(bank)).topk(40, 1, largest=False).indices
    out = []
    for i in range(len(query)):
        q, cand = query[i:i + 1], bank[near[i]]
        cand = align(q, cand) if registered else cand
        out.append(best_per_candidate(q, cand[None], 3, r)[0].amin(0))
    return nb.leave_outline(torch.stack(out), query, 1)


def per_slice_maps(query, bank, chunk=8):
    """Yields (i, best [b, 40, H, W]): for queries i .. i + b, each pixel's best patch (the package's p and r) in
    each of its 40 most similar bank slices, before the best slice is taken."""
    p, r, _ = nb.patch_geometry(query.shape[-1])
    near = torch.cdist(nb.describe(query), nb.describe(bank)).topk(40, 1, largest=False).indices
    for i in range(0, len(query), chunk):
        yield i, best_per_candidate(query[i:i + chunk], bank[near[i:i + chunk]], p, r)


def nearest_maps(query, bank, ms):
    """{m: maps}: the mean of each pixel's m smallest per-bank-slice patch distances (patch 3, radius 2, 40 slices)."""
    out = {m: torch.zeros(len(query), *query.shape[-2:]) for m in ms}
    for i, best in per_slice_maps(query, bank):
        ordered = best.sort(1).values
        for m in ms:
            out[m][i:i + len(best)] = ordered[:, :m].mean(1)
    return {m: nb.leave_outline(v, query, 1) for m, v in out.items()}


def loso_maps(bank, subjects):
    """Each bank slice's map against the bank slices of the other subjects."""
    out = torch.zeros(len(bank), *bank.shape[-2:])
    for s in subjects.unique():
        own = subjects == s
        out[own] = nb.patch_distance_maps(bank[own], bank[~own], 40, 1)
    return out


def normative(query, bank, own, k):
    """(mean, sd) [N, H, W] of the leave-one-subject-out maps of each query's k most similar bank slices."""
    near = torch.cdist(nb.describe(query), nb.describe(bank)).topk(k, 1, largest=False).indices
    m = own[near]  # [N, k, H, W]
    return m.mean(1), m.std(1)


def z_by_normal(maps, query, bank, own, k=40):
    """``maps`` as z-scores by :func:`normative` (3x3-smoothed; the spread plus the median map value), outline left
    out."""
    mean, sd = (F.avg_pool2d(v[:, None], 3, 1, 1)[:, 0] for v in normative(query, bank, own, k))
    return nb.leave_outline((maps - mean) / (sd + own[own > 0].median()), query, 1)


def coherent_maps(query, bank, windows):
    """{c: maps}: each pixel's best patch (patch 3, radius 2) per bank slice, averaged over a c x c window in that
    slice before the best slice is taken, so that a neighbourhood must be matched by one slice (its offsets still
    free per pixel) rather than pieced together from many; c = 1 is the package's distance."""
    out = {c: torch.zeros(len(query), *query.shape[-2:]) for c in windows}
    for i, best in per_slice_maps(query, bank):
        for c in windows:
            out[c][i:i + len(best)] = nb.box_mean(best.flatten(0, 1)[:, None], c).view(best.shape).amin(1)
    return {c: nb.leave_outline(v, query, 1) for c, v in out.items()}


def deform(q, cand, grid, steps=100, lr=0.01, robust=0.0):
    """``cand`` [B, K, 1, H, W] warped onto ``q`` [B, 1, H, W] by an affine map and a smooth displacement on a
    ``grid`` x ``grid`` lattice of control points (bicubic to every pixel), fitted by Adam on the squared difference
    of 1-pixel-blurred images (Charbonnier with scale ``robust`` if given, so that a lesion does not drive the fit)."""
    b, k, _, h, w = cand.shape
    flat, qb = cand.flatten(0, 1), blur(q).repeat_interleave(k, 0)
    cb = blur(flat)
    theta = torch.eye(2, 3).repeat(b * k, 1, 1).requires_grad_(True)
    field = torch.zeros(b * k, 2, grid, grid, requires_grad=True)
    opt = torch.optim.Adam([theta, field], lr=lr)

    def warp(x):
        base = F.affine_grid(theta, x.shape, align_corners=False)
        d = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        return F.grid_sample(x, base + d, align_corners=False, padding_mode="zeros")

    for _ in range(steps):
        r = (warp(cb) - qb).pow(2)
        if robust:
            r = (r + robust ** 2).sqrt() - robust
        loss = r.mean() * b * k
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return warp(flat).view(b, k, 1, h, w)


def deformed_maps(query, bank, k, grid, robust, radius, chunk=16, steps=100):
    """{name: maps}: each query's ``k`` most similar bank slices (by ranks) deformably registered onto it, then the
    3x3 squared difference to each (searched within ``radius``), the per-pixel min / mean of the two smallest /
    median over the k."""
    near = torch.cdist(nb.describe(query), nb.describe(bank)).topk(k, 1, largest=False).indices
    out = {n: torch.zeros(len(query), *query.shape[-2:]) for n in ("min", "mean of 2", "median")}
    for i in range(0, len(query), chunk):
        q, cand = query[i:i + chunk], bank[near[i:i + chunk]]
        ordered = best_per_candidate(q, deform(q, cand, grid, steps=steps, robust=robust), 3, radius).sort(1).values
        out["min"][i:i + chunk] = ordered[:, 0]
        out["mean of 2"][i:i + chunk] = ordered[:, :2].mean(1)
        out["median"][i:i + chunk] = ordered.median(1).values
    return {n: nb.leave_outline(v, query, 1) for n, v in out.items()}


def predicted_maps(query, bank, p, ms, centre=False, chunk=8):
    """{m: maps}: each query pixel predicted from its surroundings, the mean of the centres of the m bank patches
    (p x p, centre left out unless ``centre``; within radius 2 in the 40 most similar bank slices) whose
    surroundings are nearest its own, and the map the 3x3 mean of the squared residual."""
    h, w = query.shape[-2:]
    r = 2
    near = torch.cdist(nb.describe(query), nb.describe(bank)).topk(40, 1, largest=False).indices
    padded = F.pad(bank, (r,) * 4)
    out = {m: torch.zeros(len(query), h, w) for m in ms}
    top = max(ms)
    for i in range(0, len(query), chunk):
        q, cand = query[i:i + chunk][:, None], padded[near[i:i + chunk]]  # [b, 1, 1, H, W], [b, 40, 1, H', W']
        best_d = best_v = None
        for dy in range(2 * r + 1):
            for dx in range(2 * r + 1):
                c = cand[..., dy:dy + h, dx:dx + w]
                sq = (c - q).pow(2).sum(2)  # [b, 40, H, W]
                d = nb.box_mean(sq.flatten(0, 1)[:, None], p).view(sq.shape) * p * p - (0 if centre else sq)
                v = c[:, :, 0]
                if best_d is not None:
                    d, v = torch.cat([best_d, d], 1), torch.cat([best_v, v], 1)
                keep = d.topk(min(top, d.shape[1]), 1, largest=False).indices
                best_d, best_v = d.gather(1, keep), v.gather(1, keep)
        for m in ms:
            residual = (q[:, 0, 0] - best_v[:, :m].mean(1)).pow(2) * (q[:, 0, 0] > 0)
            out[m][i:i + chunk] = nb.box_mean(residual[:, None], 3)[:, 0]
    return {m: nb.leave_outline(v, query, 1) for m, v in out.items()}


def bias_fields(n, h, w, amount, seed):
    """[n, 1, h, w] smooth multiplicative fields, 1 +- about ``amount`` (bilinear from a 3 x 3 grid)."""
    g = torch.Generator().manual_seed(seed)
    coarse = 1 + amount * (2 * torch.rand(n, 1, 3, 3, generator=g) - 1)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)


def with_context(x, c, w):
    """``x`` [N, 1, H, W] with a second channel: w x the c x c mean of its foreground around each pixel (0 outside),
    so that a patch matches only where its surroundings' brightness matches too."""
    fg = (x > 0).float()
    mean = nb.box_mean(x, c) / nb.box_mean(fg, c).clamp(min=1e-6) * fg
    return torch.cat([x, w * mean], 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lever", choices=("quantiles", "noise", "scales", "align", "statistics", "nearest",
                                           "normative", "context", "stack", "coherent",
                                           "augment", "describe", "deform", "predict", "window"))
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--size", type=int, default=64, help="128: the describe, window and quantiles levers only "
                    "(outline 2, as chosen there; describe: the pixels row alone)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print("| draw, scoring | image AUROC | per kind | pixel AUROC in the brain |\n|---|---|---|---|")
    for seed in map(int, args.seeds.split(",")):
        if args.size != 64 and args.lever not in ("describe", "window", "quantiles"):
            ap.error("--size other than 64 is for the describe, window and quantiles levers")
        e = 1 if args.size == 64 else 2
        train, test = load_brain_subjects(args.size, seed, QUICK["train_subjects"], QUICK["test_subjects"])
        val, trn = validation_split(len(train.images), TrainConfig(image_size=args.size), train.subjects)
        bank, held, query = train.images[trn].float(), train.images[val].float(), test.images.float()
        plain = nb.patch_distance_maps(query, bank, 40, e)

        def show(tag, scores, maps=plain):
            report(f"seed {seed}: {tag}", scores, maps, test)

        show("the package's distance", nb.peaks(plain, nb.peak_window(args.size)))
        if args.lever == "quantiles":
            qb, db = quantiles(bank), nb.describe(bank)
            self_d = torch.cdist(db, db).fill_diagonal_(float("inf"))
            for k, both in ((40, False), (40, True), (10, True)):
                near = torch.cdist(nb.describe(query), db).topk(k, 1, largest=False).indices
                b = standardize(bank, qb, qb[self_d.topk(k, 1, largest=False).indices].mean(1)) if both else bank
                m = nb.patch_distance_maps(standardize(query, quantiles(query), qb[near].mean(1)), b, 40, e)
                show(f"percentiles matched to the {k} most similar bank slices ({'bank too' if both else 'query'})",
                     nb.peaks(m, nb.peak_window(args.size)), m)
        elif args.lever == "noise":
            sd = noise_sd(query)
            print(f"the queries' noise estimates: {float(sd.min()):.3f} to {float(sd.max()):.3f} "
                  f"(median {float(sd.median()):.3f})")
            var = sd[:, None, None] ** 2
            show("map / the query's noise variance", nb.peaks(plain / var), plain / var)
            show("map - twice the query's noise variance", nb.peaks(plain - 2 * var), plain - 2 * var)
            m = nb.patch_distance_maps(smooth(query), smooth(bank), 40, 1)
            show("images smoothed 1-2-1", nb.peaks(m), m)
            show("images smoothed 1-2-1, map / noise variance", nb.peaks(m / var), m / var)
        elif args.lever == "scales":
            units, maps = {}, {}
            for name, (p, r, pool) in {"patch 3": (3, 2, 1), "patch 5": (5, 2, 1), "patch 7": (7, 3, 1),
                                       "patch 3 at half resolution": (3, 1, 2)}.items():
                mt, mv = maps_at(query, bank, p, r, pool), maps_at(held, bank, p, r, pool)
                st, sv = smoothed_max(mt), smoothed_max(mv)
                units[name], maps[name] = (st - sv.mean()) / sv.std(), mt
                if name != "patch 3":
                    show(name, st, mt)
            for other in ("patch 3 at half resolution", "patch 5", "patch 7"):
                both = torch.stack([units["patch 3"], units[other]])
                show(f"patch 3 + {other}, sum in validation units", both.sum(0))
                show(f"patch 3 + {other}, max in validation units", both.amax(0))
        elif args.lever == "align":
            for registered in (False, True):
                for r in (1, 2):
                    t = time.perf_counter()
                    m = aligned_maps(query, bank, r, registered)
                    show(f"{'bank slices registered (affine)' if registered else 'as they are'}, radius {r} "
                         f"({time.perf_counter() - t:.0f} s)", nb.peaks(m), m)
        elif args.lever == "nearest":
            for m, maps in nearest_maps(query, bank, (2, 3, 5, 10)).items():
                show(f"the mean of the {m} bank slices' best patches", nb.peaks(maps), maps)
        elif args.lever == "normative":
            t = time.perf_counter()
            own = loso_maps(bank, train.subjects[trn])
            print(f"leave-one-subject-out maps of {len(bank)} bank slices: {time.perf_counter() - t:.0f} s")
            floor = own[own > 0].median()
            for k in (10, 40):
                mean, sd = normative(query, bank, own, k)
                mean, sd = F.avg_pool2d(mean[:, None], 3, 1, 1)[:, 0], F.avg_pool2d(sd[:, None], 3, 1, 1)[:, 0]
                for tag, m in ((f"map / (mean of {k} + median)", plain / (mean + floor)),
                               (f"map / (mean of {k} + median / 4)", plain / (mean + floor / 4)),
                               (f"map - mean of {k}", plain - mean),
                               (f"(map - mean of {k}) / (sd + median)", (plain - mean) / (sd + floor))):
                    m = nb.leave_outline(m, query, 1)
                    show(tag, nb.peaks(m), m)
        elif args.lever == "context":
            for c in (5, 9):
                for w in (1.0, 2.0, 3.0):
                    m = nb.patch_distance_maps(with_context(query, c, w), with_context(bank, c, w), 40, 1)
                    show(f"patch with its {c}x{c} mean, weight {w:g}", nb.peaks(m), m)
        elif args.lever == "stack":
            qb, db = quantiles(bank), nb.describe(bank)
            self_d = torch.cdist(db, db).fill_diagonal_(float("inf"))
            near = torch.cdist(nb.describe(query), db).topk(10, 1, largest=False).indices
            qbank = standardize(bank, qb, qb[self_d.topk(10, 1, largest=False).indices].mean(1))
            qquery = standardize(query, quantiles(query), qb[near].mean(1))
            subjects = train.subjects[trn]
            for tag, b, q in (("Q", qbank, qquery), ("C", with_context(bank, 9, 1.0), with_context(query, 9, 1.0)),
                              ("Q+C", with_context(qbank, 9, 1.0), with_context(qquery, 9, 1.0))):
                m = nb.patch_distance_maps(q, b, 40, 1)
                show(tag, nb.peaks(m), m)
                z = z_by_normal(m, query, bank, loso_maps(b, subjects))
                show(tag + "+N", nb.peaks(z), z)
            z = z_by_normal(plain, query, bank, loso_maps(bank, subjects))
            show("N", nb.peaks(z), z)
        elif args.lever == "coherent":
            for c, maps in coherent_maps(query, bank, (3, 5, 7, 9)).items():
                show(f"one slice per {c}x{c} neighbourhood", nb.peaks(maps), maps)
        elif args.lever == "augment":
            h, w = bank.shape[-2:]
            variants = {
                "gamma 0.9 and 1.1": [bank ** 0.9, bank ** 1.1],
                "gamma 0.85 and 1.15": [bank ** 0.85, bank ** 1.15],
                "two bias fields of +-10 %": [(bank * bias_fields(len(bank), h, w, 0.1, s)).clamp(0, 1) for s in (1, 2)],
                "gamma 0.9 and 1.1, each with a bias field of +-10 %": [
                    (bank ** g * bias_fields(len(bank), h, w, 0.1, s)).clamp(0, 1) for s, g in ((1, 0.9), (2, 1.1))],
            }
            for tag, extra in variants.items():
                m = nb.patch_distance_maps(query, torch.cat([bank, *extra]), 40, 1)
                show(f"the bank and its copies at {tag}", nb.peaks(m), m)
        elif args.lever == "predict":
            held_plain = nb.patch_distance_maps(held, bank, 40, e)
            units = lambda v, ref: (v - ref.mean()) / ref.std()
            for p, centre in ((3, False), (5, False), (3, True), (5, True)):
                t = time.perf_counter()
                tag = "patches" if centre else "surroundings"
                held_maps = predicted_maps(held, bank, p, (5, 10), centre)
                for m, maps in predicted_maps(query, bank, p, (5, 10), centre).items():
                    show(f"each pixel predicted by the {m} nearest {p}x{p} {tag} ({time.perf_counter() - t:.0f} s)",
                         nb.peaks(maps), maps)
                    both = units(nb.peaks(maps), nb.peaks(held_maps[m])) + units(nb.peaks(plain), nb.peaks(held_plain))
                    show(f"the same + the package's distance, in validation units", both)
        elif args.lever == "window":
            for w in (1, 3, 5, 7, 9):
                show(f"the largest {w}x{w} mean", nb.peaks(plain, w))
            held_maps = nb.patch_distance_maps(held, bank, 40, 0)
            foreign = nb.foreign_patches(held, 128, seed=0)
            foreign_maps = nb.patch_distance_maps(foreign, bank, 40, e)
            told = {w: nb.auroc(nb.peaks(nb.leave_outline(held_maps, held, e), w), nb.peaks(foreign_maps, w))
                    for w in (1, 3, 5, 7, 9)}
            print("foreign patches told from the validation slices, by window: "
                  + ", ".join(f"{w}x{w} {v:.3f}" for w, v in told.items()))
            most = nb.patch_geometry(args.size)[1]
            wide = nb.choose_outline(held_maps, held, most, places=5)
            print(f"the outline chosen with 3x3 places (the package's): {nb.choose_outline(held_maps, held, most)}, "
                  f"with 5x5 places: {wide}")
            m = nb.patch_distance_maps(query, bank, 40, wide)
            for w in (3, 5):
                show(f"outline {wide} (chosen with 5x5 places), the largest {w}x{w} mean", nb.peaks(m, w), m)
        elif args.lever == "deform":
            for k, grid, robust, radius in ((10, 6, 0.0, 0), (10, 6, 0.05, 0), (10, 6, 0.05, 1), (20, 8, 0.05, 1)):
                t = time.perf_counter()
                for name, m in deformed_maps(query, bank, k, grid, robust, radius).items():
                    show(f"{k} slices deformed ({grid}x{grid} grid, robust {robust:g}), radius {radius}, {name} "
                         f"({time.perf_counter() - t:.0f} s)", nb.peaks(m), m)
        elif args.lever == "describe":
            m = nb.patch_distance_maps(query, bank, 40, e, description="pixels")
            show("the 40 most similar bank slices by their pixels (the package's before ranks)", nb.peaks(m), m)
            if args.size != 64:
                continue
            original = nb.describe
            for tag, fn in (("the foreground alone", lambda x, d: F.adaptive_avg_pool2d(
                                (nb.unit_images(x) > 0).float(), 16).flatten(1)),
                            ("ranks at 8x8", lambda x, d: F.adaptive_avg_pool2d(nb.ranks(x), 8).flatten(1))):
                nb.describe = fn
                try:
                    m = nb.patch_distance_maps(query, bank, 40, e)
                finally:
                    nb.describe = original
                show(f"the 40 most similar bank slices by {tag}", nb.peaks(m), m)
        else:
            flat = plain.flatten(1)
            show("largest pixel", flat.amax(1))
            show("largest 5x5 mean", smoothed_max(plain, 5))
            for n in (4, 10, 20):
                show(f"mean of the top {n} pixels", flat.topk(n, 1).values.mean(1))
            show("the square root of the map, largest 3x3 mean", nb.peaks(plain.sqrt()))
            inner = nb.near_background(query, 1) == 0
            for q in (0.5, 0.9):
                level = torch.stack([torch.quantile(plain[i][inner[i]], q) for i in range(len(plain))])
                for floor in (0.0, 1.0):
                    show(f"peak / (the map's {q:g} quantile in the brain + {floor:g} x its median over the queries)",
                         nb.peaks(plain) / (level + floor * level.median()))


if __name__ == "__main__":
    main()
