"""Experiment (issue 26): the image's distance from several distinct peaks of its map.

The image's ``patches`` distance is its map's largest window mean (:func:`peak_window`). Multiple sclerosis puts
several foci in one slice, a tumour's rim lights up in more than one place, while a normal slice's largest peak is
often a single fold no bank subject has. Here the map's window means give their k largest peaks at least ``gap``
pixels apart (greedy non-maximum suppression, as object detectors keep boxes), and the image's score is their
mean, or the k-th alone. The mean of the top pixels, measured before, lost (0.736-0.791): those pixels are one
peak. Image AUROC per kind on the quick subjects, four draws, the distance alone (no model), and the same score's
AUROC for foreign patches pasted into the validation slices (what normal data alone could choose on).

    python experiments/distinct_peaks.py [--size 64] [--seeds 0,1,2,3]   # 20 s per draw at 64x64, 1.5 min at 128x128

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse

import torch
import torch.nn.functional as F
from pixel_spread import draw, image_row, print_rows, three_maps  # this folder's: run as scripts

from patchgan_fast.scoring import neighbours as nb


def distinct_peaks(maps, window, k, gap):
    """[N, k]: the k largest window means of ``maps`` [N, H, W] whose centres lie at least ``gap`` pixels apart
    (Chebyshev), largest first."""
    means = F.avg_pool2d(maps[:, None], window, 1, window // 2)[:, 0].clone()  # as nb.peaks
    n, h, w = means.shape
    out = []
    for _ in range(k):
        flat = means.flatten(1)
        best, at = flat.max(1)
        out.append(best)
        y, x = at // w, at % w
        yy, xx = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
        near = ((yy - y[:, None, None]).abs() < gap) & ((xx - x[:, None, None]).abs() < gap)
        means = means.masked_fill(near, float("-inf"))
    return torch.stack(out, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2,3")
    args = ap.parse_args()
    torch.set_num_threads(2)
    window = nb.peak_window(args.size)
    p = nb.patch_geometry(args.size)[0]
    gaps = sorted({2 * p, 4 * p})
    sets = {"the largest (the package's)": (1, window, 1, "mean")}
    for gap in gaps:
        for k in (2, 3, 4):
            sets[f"mean of the {k} largest, {gap} px apart"] = (k, window, gap, "mean")
        sets[f"the 2nd largest, {gap} px apart"] = (2, window, gap, "last")
    rows = {}
    for seed in map(int, args.seeds.split(",")):
        test, held, distance_maps = draw(args.size, seed)
        maps = three_maps(test, held, distance_maps, seed)
        for name, (k, w, gap, how) in sets.items():
            score = {}
            for n, m in maps.items():
                top = distinct_peaks(m, w, k, max(gap, 1))
                score[n] = top.mean(1) if how == "mean" else top[:, -1]
            rows.setdefault(name, []).append(image_row(score, test))
        print(f"seed {seed} done", flush=True)
    print(f"\n{args.size}x{args.size}: image AUROC (mean over draws {args.seeds}); window {window}x{window}\n")
    print_rows("score", rows)


if __name__ == "__main__":
    main()
