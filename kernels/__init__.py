"""Triton kernels of patchgan_fast (installed as ``patchgan_fast.kernels``).

Importing this package needs triton; ``patchgan_fast.ops._backend`` decides whether it is used.
"""

from .patch_score import patch_scores_triton

__all__ = ["patch_scores_triton"]
