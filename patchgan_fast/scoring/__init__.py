"""Scoring: a config and its plan, the error measures, ``score_batch``, the fast :class:`Scorer`, the
nearest-neighbour feature score, and the reference pipeline the fast path is checked against."""

from .batch import default_smoothing, error_maps, score_batch
from .config import ERRORS, RANKING_PRESETS, ScoreConfig, ScoreResult, default_forward_batch, score_statistics
from .errors import combine_errors, patch_scores, pixel_errors
from .reference import reference_pipeline
from .scorer import BatchQueue, Scorer

__all__ = [
    "score_batch", "error_maps", "default_smoothing", "ScoreConfig", "ScoreResult", "ERRORS", "RANKING_PRESETS",
    "default_forward_batch", "score_statistics", "pixel_errors", "patch_scores", "combine_errors", "reference_pipeline", "Scorer",
    "BatchQueue",
]
