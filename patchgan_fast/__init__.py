"""patchgan_fast: Patch-GAN novelty detection for medical images (Chen et al., AAAI 2025), fast.

    from patchgan_fast import PatchGAN, TrainConfig, score_batch
    model = PatchGAN.fit(normal_images, TrainConfig(image_size=128, patch_size=16))
    result = score_batch(model, images)
    result.scores, result.patch_errors
    scores, patch_errors = Scorer(model)(images)   # the fast path for many batches
"""

from . import ops
from ._backend import info as backend_info
from .config import LOSS_PRESETS, TrainConfig
from .model import PatchGAN
from .pipeline import Scorer
from .scoring import ERRORS, RANKING_PRESETS, ScoreConfig, ScoreResult, error_maps, pixel_errors, score_batch

__version__ = "0.1.0"

__all__ = [
    "ops", "score_batch", "error_maps", "pixel_errors", "Scorer", "ScoreConfig", "ScoreResult", "RANKING_PRESETS", "ERRORS",
    "PatchGAN", "TrainConfig",
    "LOSS_PRESETS", "backend_info", "__version__",
]
