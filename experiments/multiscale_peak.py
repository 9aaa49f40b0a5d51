"""Experiment (issue 26): the image's distance from peaks of its map at several window sizes.

The image's ``patches`` distance is its map's largest mean over one window (:func:`peak_window`: 3x3 at 64x64, 5x5 at
128x128). Lesions run from 3 to 50 mm: a small window suits the small ones, a large one the large ones, whose flat
inside leaves most of a small window dark. Here each window's peak is put in units of the validation slices' peaks
at that window (mean and standard deviation), and the image's score is the largest (a scale-selecting detector)
or the mean of those units over the windows. Image AUROC per kind on the quick subjects, four draws, the distance
alone (no model); the same scores' AUROC for foreign patches pasted into the validation slices (what normal data
alone could choose on; their own units come from the validation slices, so the foreign AUROC is in-sample for
the units).

    python experiments/multiscale_peak.py [--size 64] [--seeds 0,1,2,3]   # 20 s per draw at 64x64, 1 min at 128x128

Results: experiments/results/cpu-experiment-brain-subjects.md
"""

import argparse

import torch
from pixel_spread import draw, image_row, print_rows, three_maps  # this folder's: run as scripts

from patchgan_fast.scoring import neighbours as nb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2,3")
    args = ap.parse_args()
    torch.set_num_threads(2)
    base = nb.peak_window(args.size)
    windows = [w for w in (3, 5, 7, 9, 13, 17, 25) if w <= args.size // 4 + 1]
    sets = {f"{w}x{w} alone": [w] for w in windows}
    sets.update({f"largest unit over {a}..{b}": windows[windows.index(a):windows.index(b) + 1]
                 for a, b in ((base, 9), (base, 13), (base, windows[-1]), (3, windows[-1]))})
    rows = {}
    for seed in map(int, args.seeds.split(",")):
        test, held, distance_maps = draw(args.size, seed)
        maps = three_maps(test, held, distance_maps, seed)
        peaks = {name: {w: nb.peaks(m, w) for w in windows} for name, m in maps.items()}
        units = {w: (peaks["held"][w].mean(), peaks["held"][w].std()) for w in windows}
        for name, ws in sets.items():
            score = {n: torch.stack([(peaks[n][w] - units[w][0]) / units[w][1] for w in ws]).amax(0)
                     for n in ("held", "test", "foreign")}
            rows.setdefault(name, []).append(image_row(score, test))
        print(f"seed {seed} done", flush=True)
    print(f"\n{args.size}x{args.size}: image AUROC (mean over draws {args.seeds}); the package's window {base}x{base}\n")
    print_rows("score", rows)


if __name__ == "__main__":
    main()
