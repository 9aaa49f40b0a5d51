"""mask_images: the pure-PyTorch reference vs the compiled op (C++ on CPU, CUDA on GPU).

Bytes moved: the uint8 batch read once and K normalized copies written in the model's dtype.
"""

import pytest
import torch
from cases import CASES, IDS, nbytes
from conftest import measure

from patchgan_fast import ops
from patchgan_fast.ops.reference import mask_images_reference


@pytest.mark.parametrize("impl", ["reference", "op"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_mask_images(benchmark, device, copy_bandwidth, record, case, impl):
    name, b, c, s, p, k, dtype = case
    x = torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8, device=device)
    keys = torch.arange(b, device=device)
    kw = dict(layout="phases" if k > 1 else "none", patch_size=p, num_copies=k, seed=0, box_count=(1, 4),
              box_size=(8, 32), mean=(0.5,) * c, std=(0.25,) * c, fill=0.0, dtype=dtype,
              memory_format=torch.channels_last if c == 3 else torch.contiguous_format)
    f = ops.mask_images if impl == "op" else mask_images_reference
    benchmark.group = f"mask_images {name}"
    seconds = measure(benchmark, lambda: f(x, keys, **kw), device)
    if seconds is None:
        return
    moved = nbytes(x) + k * x.numel() * torch.empty((), dtype=dtype).element_size()
    copy = copy_bandwidth(moved // 2)
    gbps = moved / seconds / 1e9
    benchmark.extra_info.update(gb_per_s=round(gbps, 1), fraction_of_copy=round(gbps * 1e9 / copy, 3))
    config = dict(case=name, impl=impl, out_dtype=str(dtype).replace("torch.", ""))
    record("seconds_per_call", seconds, "s", config)
    record("effective_bandwidth", gbps, "GB/s", config)
    record("fraction_of_copy_bandwidth", gbps * 1e9 / copy, "ratio", config)
