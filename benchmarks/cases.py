"""Benchmark sizes: the issue's H100 configurations, and scaled-down ones for a CPU."""

import torch

# (name, B, C, H=W, P, K, reconstruction dtype); T = 2 with the paper's weights throughout.
GPU_CASES = [
    ("b512-c3-256-p32-k4-bf16", 512, 3, 256, 32, 4, torch.bfloat16),
    ("b1024-c1-128-p16-k4-fp32", 1024, 1, 128, 16, 4, torch.float32),
    ("b4096-c1-64-p8-k1-fp32", 4096, 1, 64, 8, 1, torch.float32),
]
CPU_CASES = [
    ("b8-c3-128-p32-k4-bf16", 8, 3, 128, 32, 4, torch.bfloat16),
    ("b32-c1-64-p16-k4-fp32", 32, 1, 64, 16, 4, torch.float32),
    ("b128-c1-32-p8-k1-fp32", 128, 1, 32, 8, 1, torch.float32),
]
CASES = GPU_CASES if torch.cuda.is_available() else CPU_CASES
IDS = [c[0] for c in CASES]


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
