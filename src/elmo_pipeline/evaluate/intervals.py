"""95 % intervals for the evaluation's accuracies, so that a table can say which gaps are real.

Two kinds, both on the test items the methods share:

* :func:`wilson_interval` for one accuracy (binomial, items independent: sentence
  classification, one title per item);
* :func:`bootstrap_accuracy` and :func:`paired_difference` resample whole groups (a
  sentence's tokens together for tagging, where the tokens of one sentence are not
  independent), and the difference of two methods is resampled *paired*: both methods are
  scored on the same resampled items, which is what makes a two-point gap between strongly
  correlated methods detectable when their separate intervals overlap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Two-sided 95 % normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(n_correct: int, n_total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (good near 0 and 1, unlike the normal
    approximation); ``(0, 1)`` when there is no item."""
    if n_total <= 0:
        return 0.0, 1.0
    p = n_correct / n_total
    denominator = 1 + z * z / n_total
    centre = (p + z * z / (2 * n_total)) / denominator
    half = z * math.sqrt(p * (1 - p) / n_total + z * z / (4 * n_total * n_total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _group_sums(values: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums of ``values`` and per-group item counts (each item its own group when
    ``groups`` is None)."""
    values = np.asarray(values, dtype=np.float64)
    if groups is None:
        return values, np.ones_like(values)
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    return np.bincount(index, weights=values), np.bincount(index).astype(np.float64)


def _resampled_means(
    sums: np.ndarray, counts: np.ndarray, n_resamples: int, seed: int
) -> np.ndarray:
    """Mean over items of ``n_resamples`` bootstrap samples of the groups."""
    rng = np.random.default_rng(seed)
    n_groups = len(sums)
    weights = np.zeros((n_resamples, n_groups))
    picks = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    np.add.at(weights, (np.arange(n_resamples)[:, None], picks), 1.0)
    return (weights @ sums) / np.maximum(weights @ counts, 1.0)


def bootstrap_accuracy(
    correct: np.ndarray,
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 1,
) -> tuple[float, float]:
    """Percentile 95 % interval of the accuracy, resampling whole groups of items."""
    correct = np.asarray(correct, dtype=bool)
    if correct.size == 0:
        return 0.0, 1.0
    sums, counts = _group_sums(correct, groups)
    means = _resampled_means(sums, counts, n_resamples, seed)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_difference(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 1,
) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B on the same items, with its paired 95 % interval.

    ``significant`` is True when the interval excludes 0."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.shape} items against {b.shape}")
    if a.size == 0:
        return {"difference": 0.0, "ci95": [-1.0, 1.0], "significant": False}
    sums, counts = _group_sums(a - b, groups)
    means = _resampled_means(sums, counts, n_resamples, seed)
    low, high = (float(v) for v in np.percentile(means, [2.5, 97.5]))
    return {
        "difference": float(a.mean() - b.mean()),
        "ci95": [low, high],
        "significant": bool(low > 0 or high < 0),
    }


def accuracy_with_interval(
    correct: np.ndarray, groups: np.ndarray | None = None, seed: int = 1
) -> dict[str, Any]:
    """``{"accuracy", "n", "ci95"}``: Wilson for independent items, group bootstrap otherwise."""
    correct = np.asarray(correct, dtype=bool)
    n = int(correct.size)
    k = int(correct.sum())
    if groups is None:
        low, high = wilson_interval(k, n)
    else:
        low, high = bootstrap_accuracy(correct, groups, seed=seed)
    return {"accuracy": k / n if n else None, "n": n, "ci95": [round(low, 4), round(high, 4)]}
