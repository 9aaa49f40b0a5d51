"""Detection metrics and the paper's figures: ROC curves (Fig. 6) and score distributions (Fig. 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


def image_metrics(scores: Sequence[float], labels: Sequence[int]) -> dict:
    """Image AUROC and AUPRC (label 1 = abnormal)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if len(set(y.tolist())) != 2:
        raise ValueError(f"need both normal (0) and abnormal (1) images, got labels {sorted(set(y.tolist()))}")
    return {"auroc": float(roc_auc_score(y, s)), "auprc": float(average_precision_score(y, s)),
            "normal": int((y == 0).sum()), "abnormal": int((y == 1).sum())}


def pixel_metrics(heatmaps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> dict:
    """Pixel AUROC, AUPRC and best Dice (the highest Dice of the thresholded maps over every threshold, as the
    medical anomaly-segmentation literature reports it) of per-pixel scores against ground-truth masks."""
    h = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in heatmaps])
    m = np.concatenate([np.asarray(x).ravel() > 0 for x in masks])
    if m.all() or not m.any():
        raise ValueError("pixel metrics need both lesion and normal pixels in the masks")
    precision, recall, _ = precision_recall_curve(m, h)
    dice = 2 * precision * recall / np.maximum(precision + recall, 1e-12)  # Dice = F1 at each threshold
    return {"pixel_auroc": float(roc_auc_score(m, h)), "pixel_auprc": float(average_precision_score(m, h)),
            "pixel_best_dice": float(dice.max())}


def plot_roc(curves: dict[str, tuple[Sequence[float], Sequence[int]]], path: str | Path, title: str = "ROC") -> None:
    """ROC curves of several methods in one figure, like the paper's Fig. 6."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, (scores, labels) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_distributions(scores: Sequence[float], labels: Sequence[int], path: str | Path,
                       title: str = "Score distribution", bins: Optional[int] = 40) -> None:
    """Histograms of normal and abnormal scores of one method, like a panel of the paper's Fig. 3."""
    plot_distribution_panels({title: (scores, labels)}, path, bins=bins)


def plot_distribution_panels(curves: dict[str, tuple[Sequence[float], Sequence[int]]], path: str | Path,
                             title: Optional[str] = None, bins: Optional[int] = 40) -> None:
    """Normal and abnormal score histograms, one panel per method (each on its own score scale), like
    the paper's Fig. 3. Each class's histogram is a density (area 1), so that a few normal images beside
    many abnormal ones (the one-class protocol) stay visible; the legend gives the counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(curves), 4)
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 if cols == 1 else 3.6 * cols, 3.2 * rows), dpi=120, squeeze=False)
    for ax, (name, (scores, labels)) in zip(axes.flat, curves.items()):
        s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
        edges = np.histogram_bin_edges(s, bins=bins)
        ax.hist(s[y == 0], bins=edges, alpha=0.6, density=True,
                label=f"normal ({int((y == 0).sum())})", color="#2e86c1")
        ax.hist(s[y == 1], bins=edges, alpha=0.6, density=True,
                label=f"abnormal ({int((y == 1).sum())})", color="#c0392b")
        ax.set(xlabel="anomaly score", ylabel="density", title=name)
        ax.legend(fontsize=8)
    for ax in axes.flat[len(curves):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
