"""Comparing two classifiers on the same test images.

Two models scored on the same images are a *paired* comparison: what matters is
where they disagree. Of the images that exactly one of them classifies
correctly, ``b`` go to the first model and ``c`` to the second; the images
both get right or both get wrong say nothing about which is better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["PairedTest", "mcnemar", "correct_predictions", "decode_predictions"]


@dataclass(frozen=True)
class PairedTest:
    """The outcome of McNemar's test for two models scored on the same ``n`` images."""
    n: int
    b: int              # right by the first model only
    c: int              # right by the second model only
    difference: float   # first accuracy minus second, (b - c) / n
    std_error: float    # standard error of that difference
    p_value: float      # exact two-sided p-value of McNemar's test


def _as_bool(correct) -> np.ndarray:
    array = correct.cpu().numpy() if isinstance(correct, torch.Tensor) else np.asarray(correct)
    if array.ndim != 1:
        raise ValueError(f"expected one value per test image (1-D), got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError("expected right/wrong flags (booleans or 0/1) per test image")
    return array.astype(bool)


def mcnemar(correct_a: Sequence[bool] | np.ndarray | torch.Tensor,
            correct_b: Sequence[bool] | np.ndarray | torch.Tensor) -> PairedTest:
    """McNemar's exact test of two models that were scored on the same images.

    ``correct_a`` and ``correct_b`` say, image by image, whether each model was right.
    Under the hypothesis that both models are equally accurate, each of the ``b + c``
    disagreements is equally likely to favour either, so ``b`` is binomial with
    ``b + c`` trials and probability 1/2; the p-value is twice the smaller tail
    (at most 1). The standard error of the difference of accuracies is that of the
    mean of the per-image differences (+1, 0 or -1): ``sqrt(b + c - (b - c)**2 / n) / n``.
    """
    from scipy.stats import binom

    a, b_ = _as_bool(correct_a), _as_bool(correct_b)
    if len(a) != len(b_):
        raise ValueError(f"the models were scored on {len(a)} and {len(b_)} images: "
                         "a paired test needs the same images")
    if len(a) == 0:
        raise ValueError("no test images")
    n = len(a)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    p = 1.0 if b + c == 0 else min(1.0, 2 * float(binom.cdf(min(b, c), b + c, 0.5)))
    std_error = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return PairedTest(n=n, b=b, c=c, difference=(b - c) / n, std_error=std_error, p_value=p)


def correct_predictions(predictions: str | Sequence[int] | torch.Tensor,
                        labels: Sequence[int] | torch.Tensor) -> np.ndarray:
    """Whether each prediction equals its label, as booleans.

    ``predictions`` may be a record's ``test_predictions``: one digit per test image.
    """
    if isinstance(predictions, str):
        predictions = decode_predictions(predictions)
    predictions = np.asarray(predictions.cpu() if isinstance(predictions, torch.Tensor) else predictions)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.shape[0] if predictions.ndim else 0} predictions for "
                         f"{labels.shape[0] if labels.ndim else 0} labels")
    return predictions == labels


def decode_predictions(predictions: str) -> torch.Tensor:
    """A record's ``test_predictions`` (one digit per test image) as a tensor of class indices."""
    if not predictions.isdigit() or not predictions.isascii():
        raise ValueError("test_predictions must be a string of digits, one class index per test image "
                         f"(got {predictions[:20]!r}...): read it from a run record")
    return torch.from_numpy(np.frombuffer(predictions.encode("ascii"), dtype=np.uint8) - ord("0")).long()
