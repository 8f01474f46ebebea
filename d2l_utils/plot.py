"""Figures: training curves and image grids."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch

from .data import CLASS_NAMES

__all__ = ["plot_history", "show_images"]


def plot_history(history, ax=None, title: str | None = None):
    """Training loss and train/test accuracy per epoch on one axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3))
    epochs = history["epoch"]
    ax.plot(epochs, history["train_loss"], "-", label="train loss")
    ax.plot(epochs, history["train_acc"], "--", label="train acc")
    ax.plot(epochs, history["test_acc"], "-.", label="test acc")
    ax.set_xlabel("epoch")
    ax.set_xlim(0.8, max(epochs) + 0.2)
    ax.set_xticks(epochs if len(epochs) <= 12 else ax.get_xticks())
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


def show_images(images: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None,
                predictions: Sequence[int] | torch.Tensor | None = None, ncols: int = 8,
                scale: float = 1.4, cmap: str = "gray_r"):
    """A grid of (N, H, W) or (N, 1, H, W) images, titled with class names.

    With ``predictions`` a title reads "true / predicted" and a miss is red.
    """
    images = images.detach().cpu()
    if images.dim() == 4:
        images = images[:, 0]
    n = len(images)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, min(n, ncols), figsize=(min(n, ncols) * scale, nrows * scale * 1.15),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap=cmap)
        if labels is not None:
            true = CLASS_NAMES[int(labels[i])]
            if predictions is None:
                ax.set_title(true, fontsize=9)
            else:
                pred = CLASS_NAMES[int(predictions[i])]
                ax.set_title(f"{true}\n{pred}", fontsize=8, color="black" if true == pred else "red")
    fig.tight_layout()
    return fig
