"""Paired bootstrap over examples: on how many resamples of one set of examples does system A's metric beat
system B's (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 16; Koehn, EMNLP 2004, for
its use in comparing two systems on one test set).

Each resample draws N examples with replacement, the same draw for both systems, so the variation the two
share (easy and hard examples) cancels. Any metric of ``kdkit.eval.metrics`` works, F1 and MCC included,
since each resample is scored whole.
"""

from __future__ import annotations

import numpy as np

from kdkit.errors import KdkitError
from kdkit.eval.metrics import compute_metrics, greater_is_better

RESAMPLES = 1000


def paired_win_rate(
    task: str,
    metric: str,
    a: np.ndarray,
    b: np.ndarray,
    labels: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> float:
    """Share of ``resamples`` paired bootstrap resamples on which predictions ``a`` (N,) score strictly better
    than predictions ``b`` (N,) against ``labels`` (N,) by ``metric`` (higher, or lower for a lower-is-better
    metric). Ties count as not better, so identical predictions give 0. Seeded: the same inputs, the same
    answer."""
    a, b, labels = np.asarray(a), np.asarray(b), np.asarray(labels)
    n = len(labels)
    if n == 0 or len(a) != n or len(b) != n:
        raise KdkitError(
            f"paired bootstrap needs non-empty predictions of equal length, got {len(a)}, {len(b)} and "
            f"{n} labels"
        )
    if resamples < 1:
        raise KdkitError(f"paired bootstrap needs at least 1 resample, got {resamples}")
    higher = greater_is_better(metric)
    rng = np.random.default_rng(seed)
    wins = 0
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        score_a = compute_metrics(task, a[idx], labels[idx], [metric])[metric]
        score_b = compute_metrics(task, b[idx], labels[idx], [metric])[metric]
        wins += score_a > score_b if higher else score_a < score_b
    return wins / resamples
