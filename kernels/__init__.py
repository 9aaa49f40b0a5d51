"""Triton kernels of patchgan_fast (installed as ``patchgan_fast.kernels``).

Importing this package needs triton; ``patchgan_fast.ops._backend`` decides whether it is used.
"""

from .patch_score import device_constants, launch_patch_scores, map_scores_triton, patch_scores_triton

__all__ = ["patch_scores_triton", "map_scores_triton", "launch_patch_scores", "device_constants"]
