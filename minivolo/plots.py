"""Figures of a run: the training curves and the confusion matrix, written atomically as png files."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .checkpoint import atomic_write


def _figure(**kwargs):
    """A matplotlib Figure outside pyplot: it renders with Agg to files and leaves the user's backend
    (a notebook's, say) alone. Imported here, on first use: matplotlib takes a while to import."""
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def _save_figure(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def plot_curves(run_dir: Path, metrics: list[dict]) -> None:
    epochs = [m["epoch"] for m in metrics]
    fig = _figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, what in zip(axes, ("loss", "acc")):
        ax.plot(epochs, [m[f"train_{what}"] for m in metrics], "o-", label="train")
        ax.plot(epochs, [m[f"test_{what}"] for m in metrics], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("cross-entropy" if what == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("loss (train: with label smoothing, augmented)")
    axes[1].set_title("accuracy")
    fig.tight_layout()
    _save_figure(fig, run_dir / "curves.png")


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> None:
    """A confusion matrix (rows: true class, columns: predicted) as a png, counts in the cells."""
    k = len(classes)
    fig = _figure(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k))
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        limit = confusion.max() / 2
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if confusion[i, j] > limit else "black")
    ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, Path(path))
