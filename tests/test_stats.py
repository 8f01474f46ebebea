"""McNemar's test of two classifiers scored on the same images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from d2l_utils import correct_predictions, decode_predictions, mcnemar


def pair(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Right/wrong flags of two models with the given counts of agreements and disagreements."""
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return np.array(a), np.array(b)


def test_three_disagreements_all_one_way_by_hand():
    # b = 3, c = 0: under equal accuracy each disagreement favours the first model with
    # probability 1/2, so P(b >= 3) = 1/8 and the two-sided p-value is 2/8.
    result = mcnemar(*pair(both=5, a_only=3, b_only=0, neither=2))
    assert (result.n, result.b, result.c) == (10, 3, 0)
    assert result.difference == pytest.approx(0.3)
    assert result.p_value == pytest.approx(0.25)
    # per-image differences: three +1, seven 0; mean 0.3, and the standard error of the mean
    # with the population variance 0.3 - 0.09 = 0.21: sqrt(0.21 / 10)
    assert result.std_error == pytest.approx(math.sqrt(0.21 / 10))
    assert result.std_error == pytest.approx(np.std([1, 1, 1, 0, 0, 0, 0, 0, 0, 0]) / math.sqrt(10))


def test_the_p_value_is_scipys_exact_binomial_test_of_the_disagreements():
    for b, c in ((12, 30), (257, 204), (40, 40), (0, 9), (1, 0)):
        result = mcnemar(*pair(both=9_000, a_only=b, b_only=c, neither=500))
        expected = scipy_stats.binomtest(b, b + c, 0.5).pvalue
        assert result.p_value == pytest.approx(expected, rel=1e-9)


def test_with_many_disagreements_it_agrees_with_the_chi_square_approximation():
    result = mcnemar(*pair(both=8_000, a_only=257, b_only=204, neither=1_539))
    chi2 = (abs(257 - 204) - 1) ** 2 / (257 + 204)  # with the continuity correction
    assert result.p_value == pytest.approx(scipy_stats.chi2.sf(chi2, df=1), rel=0.05)
    assert result.difference == pytest.approx(53 / 10_000)


def test_images_both_models_get_right_or_wrong_do_not_change_the_p_value():
    few = mcnemar(*pair(both=10, a_only=7, b_only=2, neither=0))
    many = mcnemar(*pair(both=5_000, a_only=7, b_only=2, neither=3_000))
    assert few.p_value == many.p_value and few.difference != many.difference


def test_identical_models_are_not_different():
    result = mcnemar(*pair(both=6, a_only=0, b_only=0, neither=4))
    assert result.p_value == 1.0 and result.difference == 0.0 and result.std_error == 0.0


def test_swapping_the_models_flips_the_difference_only():
    a, b = pair(both=50, a_only=9, b_only=3, neither=8)
    forward, backward = mcnemar(a, b), mcnemar(b, a)
    assert (backward.b, backward.c) == (forward.c, forward.b)
    assert backward.difference == -forward.difference and backward.p_value == forward.p_value


def test_tensors_and_lists_of_flags_are_accepted():
    a, b = pair(both=3, a_only=2, b_only=1, neither=1)
    assert mcnemar(torch.tensor(a), b.tolist()) == mcnemar(a, b)


def test_scores_on_different_numbers_of_images_are_an_error():
    with pytest.raises(ValueError, match="same images"):
        mcnemar([True, False], [True, False, True])


def test_predictions_stored_as_digits_are_compared_with_the_labels():
    assert correct_predictions("3141", torch.tensor([3, 1, 5, 9])).tolist() == [True, True, False, False]
    assert correct_predictions([0, 2], [0, 1]).tolist() == [True, False]
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        correct_predictions("012", [0, 1])


def test_a_records_predictions_decode_to_class_indices():
    decoded = decode_predictions("90210")
    assert decoded.dtype == torch.int64 and decoded.tolist() == [9, 0, 2, 1, 0]
    for bad in ("9 1", "12a", "１２"):  # a space, a letter, full-width digits
        with pytest.raises(ValueError, match="string of digits"):
            decode_predictions(bad)
