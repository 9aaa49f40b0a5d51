"""patchgan_fast: Patch-GAN novelty detection for medical images (Chen et al., AAAI 2025), fast.

    from patchgan_fast import PatchGAN, TrainConfig, score_batch
    model = PatchGAN.fit(normal_images, TrainConfig(image_size=128, patch_size=16))
    result = score_batch(model, images)
    result.scores, result.patch_errors
    scores, patch_errors = Scorer(model)(images)   # the fast path for many batches

The package is built in layers, each importing only from those below it (checked by import-linter,
``.importlinter``): ``ops`` (the fast ops and their references), ``scoring``, ``models``, ``data``,
``evaluation`` (the detection benchmark) and ``app`` (CLI, screening, report, demo).
"""

from . import ops
from .models import LOSS_PRESETS, SAGAN, PatchGAN, SAGANConfig, TrainConfig, load_model
from .ops import backend_info
from .runtime import __version__
from .scoring import ERRORS, RANKING_PRESETS, ScoreConfig, ScoreResult, Scorer, error_maps, pixel_errors, score_batch

__all__ = [
    "ops", "score_batch", "error_maps", "pixel_errors", "Scorer", "ScoreConfig", "ScoreResult", "RANKING_PRESETS", "ERRORS",
    "PatchGAN", "TrainConfig", "SAGAN", "SAGANConfig", "load_model",
    "LOSS_PRESETS", "backend_info", "__version__",
]
