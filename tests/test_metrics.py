"""Metrics against hand-computed values, and the t quantiles against a numerical integral."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from handfuse.metrics import (
    accuracy,
    confusion_matrix,
    mean_ci95,
    mean_joint_error,
    per_class_accuracy,
    per_joint_error,
    success_curve,
    t_quantile_975,
)


def _poses_with_errors(errors_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pred, true) (..., 21, 3) whose per-joint errors are ``errors_mm`` (..., 21), along a 3-4-0 direction."""
    rng = np.random.default_rng(0)
    true = rng.normal(0, 50, errors_mm.shape + (3,))
    return true + errors_mm[..., None] * np.array([0.6, 0.8, 0.0]), true


def test_mean_joint_error_345_triangle():
    true = np.zeros((2, 21, 3))
    pred = true.copy()
    pred[0, 5] = [3.0, 4.0, 0.0]  # one joint off by 5 mm
    pred[1, :] = [0.0, 3.0, 4.0]  # every joint of frame 1 off by 5 mm
    assert mean_joint_error(pred, true) == pytest.approx((5 + 21 * 5) / 42)
    expected = np.full(21, 2.5)
    expected[5] = 5.0
    np.testing.assert_allclose(per_joint_error(pred, true), expected)
    # the same on torch tensors, and with a mask keeping frame 0 only
    mask = np.array([True, False])
    assert mean_joint_error(torch.tensor(pred), torch.tensor(true), torch.tensor(mask)) == pytest.approx(5 / 21)


def test_mask_over_batch_and_time():
    errors = np.zeros((2, 3, 21))
    errors[0, :2] = 10.0  # valid frames of sequence 0
    errors[0, 2] = 1000.0  # padding: must not count
    errors[1, 0] = 4.0
    errors[1, 1:] = 1000.0
    pred, true = _poses_with_errors(errors)
    mask = np.array([[True, True, False], [True, False, False]])
    assert mean_joint_error(pred, true, mask) == pytest.approx((10 + 10 + 4) / 3)
    with pytest.raises(ValueError):
        mean_joint_error(pred, true, np.zeros((2, 3), bool))


def test_success_curve_uses_the_worst_joint():
    errors = np.zeros((4, 21))
    errors[0, 3] = 5.0  # frame max errors: 5, 15, 25, 100 (mean errors are much smaller)
    errors[1, 0] = 15.0
    errors[2, 20] = 25.0
    errors[3, :] = 1.0
    errors[3, 7] = 100.0
    pred, true = _poses_with_errors(errors)
    thresholds, fractions = success_curve(pred, true, [0, 10, 20, 30, 101])
    np.testing.assert_allclose(thresholds, [0, 10, 20, 30, 101])
    np.testing.assert_allclose(fractions, [0, 0.25, 0.5, 0.75, 1.0])


def test_success_curve_default_is_monotone_and_reaches_one():
    rng = np.random.default_rng(1)
    pred, true = _poses_with_errors(rng.uniform(0, 60, (200, 21)))
    thresholds, fractions = success_curve(pred, true)
    assert thresholds[0] == 0 and thresholds[-1] == 80 and len(thresholds) == len(fractions)
    assert np.all(np.diff(fractions) >= 0)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0


def test_accuracy_from_labels_and_logits():
    labels = np.array([0, 1, 2, 2])
    assert accuracy(np.array([0, 1, 1, 2]), labels) == 0.75
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    assert accuracy(logits, torch.tensor(labels)) == 0.75


def test_confusion_matrix_and_per_class_accuracy_tiny_example():
    labels = [0, 0, 0, 1, 1, 3]
    pred = [0, 1, 0, 1, 1, 0]
    cm = confusion_matrix(pred, labels, num_classes=4)
    expected = np.array([
        [2, 1, 0, 0],  # true 0: two right, one called 1
        [0, 2, 0, 0],
        [0, 0, 0, 0],  # class 2 absent
        [1, 0, 0, 0],  # true 3 called 0
    ])
    np.testing.assert_array_equal(cm, expected)
    acc = per_class_accuracy(pred, labels, num_classes=4)
    np.testing.assert_allclose(acc[[0, 1, 3]], [2 / 3, 1.0, 0.0])
    assert math.isnan(acc[2])
    assert confusion_matrix(pred, labels).shape == (45, 45)
    with pytest.raises(ValueError):
        confusion_matrix([0, 5], [0, 1], num_classes=4)


def test_mean_ci95_known_t_values():
    mean, half = mean_ci95([1.0, 3.0])  # n=2: s = sqrt(2), t(1) = 12.706
    assert mean == 2.0
    assert half == pytest.approx(12.706204736 * math.sqrt(2) / math.sqrt(2))
    values = [70.0, 71.0, 72.0, 73.0, 74.0]  # n=5: s = sqrt(2.5), t(4) = 2.776
    mean, half = mean_ci95(values)
    assert mean == 72.0
    assert half == pytest.approx(2.776445105 * math.sqrt(2.5) / math.sqrt(5))
    mean, half = mean_ci95([3.5])
    assert mean == 3.5 and math.isnan(half)


def _t_cdf_minus_half(q: float, df: int, n: int = 20001) -> float:
    """Integral of Student's t density from 0 to q by Simpson's rule (independent of the table)."""
    x = np.linspace(0.0, q, n)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    f = np.exp(log_c - (df + 1) / 2 * np.log1p(x**2 / df))
    h = x[1] - x[0]
    return float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))


@pytest.mark.parametrize("df", list(range(1, 32)) + [35, 45, 100, 1000])
def test_t_quantiles_match_the_density(df):
    assert _t_cdf_minus_half(t_quantile_975(df), df) == pytest.approx(0.475, abs=2e-6)
