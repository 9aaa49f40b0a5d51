"""patchgan_fast: Patch-GAN novelty detection for medical images (Chen et al., AAAI 2025), fast.

    from patchgan_fast import score_batch, ScoreConfig
    result = score_batch(reconstructor, images, ScoreConfig(patch_size=16))
    result.scores, result.patch_errors
"""

from . import ops
from ._backend import info as backend_info
from .scoring import RANKING_PRESETS, ScoreConfig, ScoreResult, score_batch

__version__ = "0.1.0"

__all__ = ["ops", "score_batch", "ScoreConfig", "ScoreResult", "RANKING_PRESETS", "backend_info", "__version__"]
