"""Figures: training curves, image grids and what a network learned."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch

from .data import CLASS_NAMES

__all__ = ["plot_history", "show_images", "plot_confusion", "show_filters", "show_feature_maps",
           "show_cams"]


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


def plot_confusion(matrix: torch.Tensor, class_names: Sequence[str] = CLASS_NAMES, ax=None,
                   normalize: bool = True, title: str | None = None):
    """Heat map of a confusion matrix (rows true, columns predicted) with each cell's value in it.

    With ``normalize`` each row is divided by its total, so a cell reads "the fraction of
    this class predicted as that one" (2 decimals); otherwise cells are counts.
    """
    counts = torch.as_tensor(matrix).detach().cpu().double()
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"a confusion matrix of {n} classes is ({n}, {n}), got {tuple(counts.shape)}")
    if normalize:
        values = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)  # a class never seen stays 0
        vmax = 1.0
    else:
        values = counts
        vmax = max(float(values.max()), 1.0)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.55 * n + 1.5, 0.55 * n + 1.2))
    ax.imshow(values.numpy(), cmap="Blues", vmin=0, vmax=vmax)
    for row in range(n):
        for col in range(n):
            v = float(values[row, col])
            ax.text(col, row, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center",
                    fontsize=7, color="white" if v > vmax / 2 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return ax


def show_filters(weight: torch.Tensor, ncols: int = 8, scale: float = 1.0, channel: int | None = None):
    """A grid of a convolution's kernels, weight (C_out, C_in, k, k), one image per output channel.

    With several input channels a kernel is shown as the mean over them, unless
    ``channel`` picks one (the mean can hide weights of opposite sign that cancel).
    Each kernel has its own colour scale, symmetric around zero: red positive, blue negative.
    """
    weight = weight.detach().cpu().float()
    if weight.dim() != 4:
        raise ValueError(f"weight must be (C_out, C_in, k, k), got shape {tuple(weight.shape)}")
    kernels = weight.mean(dim=1) if channel is None else weight[:, channel]
    n = len(kernels)
    ncols = min(n, ncols)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale * 1.15), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        m = float(kernels[i].abs().max()) or 1.0  # an all-zero kernel still needs a scale
        ax.imshow(kernels[i].numpy(), cmap="RdBu_r", vmin=-m, vmax=m)
        ax.set_title(str(i), fontsize=8)
    fig.tight_layout()
    return fig


def show_feature_maps(maps: list[tuple[str, torch.Tensor]], channels: int = 6, scale: float = 1.2):
    """One row per layer whose output is a (C, H, W) map, showing its first ``channels`` channels.

    ``maps`` is what ``feature_maps`` returns; layers with flat outputs are left out.
    Each map has its own colour scale; the row label gives the layer and its output shape.
    """
    grids = [(name, out.detach().cpu()) for name, out in maps if out.dim() == 3]
    if not grids:
        raise ValueError("none of the outputs is a (C, H, W) map")
    ncols = min(channels, max(len(out) for _, out in grids))
    fig, axes = plt.subplots(len(grids), ncols, figsize=(ncols * scale + 1.2, len(grids) * scale * 1.15),
                             squeeze=False)
    for (name, out), row in zip(grids, axes):
        for c, ax in enumerate(row):
            # Ticks and spines off rather than axis("off"), which would hide the row label too.
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(out):
                ax.set_frame_on(False)
                continue
            ax.imshow(out[c].float().numpy(), cmap="viridis")
            ax.set_title(f"channel {c}", fontsize=7)
        row[0].set_ylabel(f"{name}\n{tuple(out.shape)}", fontsize=8)
    fig.tight_layout()
    return fig


def show_cams(images: torch.Tensor, cams: torch.Tensor, labels: Sequence[int] | torch.Tensor,
              predictions: Sequence[int] | torch.Tensor, class_names: Sequence[str] = CLASS_NAMES,
              ncols: int = 6, scale: float = 1.4):
    """Each (H, W) or (1, H, W) image in grey under its class activation map, "true / predicted".

    A map of any size is stretched over its image; each has its own colour scale. A miss is titled in red.
    """
    images, cams = images.detach().cpu(), cams.detach().cpu()
    if images.dim() == 4:
        images = images[:, 0]
    if cams.dim() == 4:
        cams = cams[:, 0]
    if len(cams) != len(images):
        raise ValueError(f"{len(images)} images but {len(cams)} maps")
    n = len(images)
    nrows = -(-n // ncols)
    # Taller rows than show_images: every title here has two lines.
    fig, axes = plt.subplots(nrows, min(n, ncols), figsize=(min(n, ncols) * scale, nrows * scale * 1.3),
                             squeeze=False)
    height, width = images.shape[-2:]
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i].numpy(), cmap="gray")
        ax.imshow(cams[i].float().numpy(), cmap="jet", alpha=0.45, interpolation="bilinear",
                  extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        true, pred = class_names[int(labels[i])], class_names[int(predictions[i])]
        ax.set_title(f"{true}\n{pred}", fontsize=8, color="black" if true == pred else "red")
    fig.tight_layout()
    return fig
