"""Speed: ``neighbours.patch_distance_maps`` now against the same function at an earlier git revision, timed in
one run on the same inputs (random uint8 banks of 1,000 slices with a background band, 16 queries, k = 40), with
the largest difference between their maps.

    python benchmarks/patch_maps_speed.py REVISION   # e.g. 0217d88, before the channels_last search; 1 minute

Results: benchmarks/results/cpu-patch-distances.md
"""

import argparse
import importlib.util
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from patchgan_fast.scoring import neighbours as now


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("revision")
    args = ap.parse_args()
    source = subprocess.run(["git", "show", f"{args.revision}:patchgan_fast/scoring/neighbours.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).parent).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "neighbours_before.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("patchgan_fast.scoring.neighbours_before", path)
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    print(f"| setting | {args.revision} | now | speed-up | largest difference |\n|---|---|---|---|---|")
    for n, s in ((1000, 64), (1000, 128)):
        bank = (torch.rand(n, 1, s, s, generator=g) * 255).to(torch.uint8)
        query = torch.rand(16, 1, s, s, generator=g)
        bank[:, :, :s // 8], query[:, :, :s // 8] = 0, 0
        diff = (before.patch_distance_maps(query, bank, 40, 1) - now.patch_distance_maps(query, bank, 40, 1)).abs().max()
        times = {before: [], now: []}
        for _ in range(3):  # alternated; the fastest of three
            for mod in times:
                t = time.perf_counter()
                mod.patch_distance_maps(query, bank, 40, 1)
                times[mod].append(time.perf_counter() - t)
        tb, tn = min(times[before]), min(times[now])
        print(f"| {s}x{s}, 16 queries, bank {n}, k 40 | {tb:.2f} s | {tn:.2f} s | {tb / tn:.1f}x | {float(diff):.1e} |")


if __name__ == "__main__":
    main()
