"""The detection benchmark: metrics and the paper's figures (:mod:`.metrics`), the method registry
(:mod:`.methods`, with the baselines of :mod:`.baselines`) and the tables of ``patchgan-fast benchmark``
(:mod:`.tables`)."""

from .methods import REGISTRY, get_method
from .metrics import image_metrics, pixel_metrics, plot_distribution_panels, plot_distributions, plot_roc

__all__ = ["REGISTRY", "get_method", "image_metrics", "pixel_metrics", "plot_roc", "plot_distributions",
           "plot_distribution_panels"]
