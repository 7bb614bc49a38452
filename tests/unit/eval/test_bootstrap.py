"""The paired bootstrap's win rate: against its closed form where one exists, a plain reference loop, and
the direction of lower-is-better metrics."""

from __future__ import annotations

import numpy as np
import pytest

from kdkit.errors import KdkitError
from kdkit.eval.bootstrap import paired_win_rate
from kdkit.eval.metrics import compute_metrics


def _labels(n: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, n)


def test_identical_predictions_never_win() -> None:
    y = _labels()
    pred = np.where(np.arange(len(y)) % 3 == 0, 1 - y, y)
    assert paired_win_rate("classification", "accuracy", pred, pred, y) == 0.0


@pytest.mark.parametrize("better_on", [1, 3, 20])
def test_a_win_on_m_examples_matches_its_closed_form(better_on: int) -> None:
    # a and b differ only on m examples, where a is right and b wrong: a wins a resample's accuracy exactly
    # when one of them is drawn, which happens with probability 1 - (1 - m/n)^n
    y = _labels()
    n = len(y)
    a = y.copy()
    b = y.copy()
    b[:better_on] = 1 - y[:better_on]
    expected = 1 - (1 - better_on / n) ** n
    rate = paired_win_rate("classification", "accuracy", a, b, y, resamples=2000)
    assert rate == pytest.approx(expected, abs=4 * np.sqrt(expected * (1 - expected) / 2000) + 1e-9)
    assert paired_win_rate("classification", "accuracy", b, a, y, resamples=2000) == 0.0


def test_the_win_rate_is_a_plain_resampling_loop() -> None:
    y = _labels(90, seed=1)
    rng = np.random.default_rng(2)
    a = np.where(rng.random(90) < 0.2, 1 - y, y)
    b = np.where(rng.random(90) < 0.25, 1 - y, y)
    draws = np.random.default_rng(7)
    wins = 0
    for _ in range(300):
        idx = draws.integers(0, 90, 90)
        f1 = [compute_metrics("classification", p[idx], y[idx], ["f1"])["f1"] for p in (a, b)]
        wins += f1[0] > f1[1]
    assert paired_win_rate("classification", "f1", a, b, y, resamples=300, seed=7) == wins / 300
    # ties count for neither side, so the two directions add up to at most 1
    assert (
        paired_win_rate("classification", "f1", a, b, y, resamples=300, seed=7)
        + paired_win_rate("classification", "f1", b, a, y, resamples=300, seed=7)
        <= 1.0
    )


def test_lower_is_better_metrics_win_by_being_lower() -> None:
    y = np.linspace(0.0, 1.0, 50)
    exact, noisy = y.copy(), y + np.random.default_rng(0).normal(0, 0.1, 50)
    assert paired_win_rate("regression", "mse", exact, noisy, y) == 1.0
    assert paired_win_rate("regression", "mse", noisy, exact, y) == 0.0


def test_bad_inputs_are_named() -> None:
    y = _labels(10)
    with pytest.raises(KdkitError, match="equal length"):
        paired_win_rate("classification", "accuracy", y[:5], y, y)
    with pytest.raises(KdkitError, match="non-empty"):
        paired_win_rate("classification", "accuracy", y[:0], y[:0], y[:0])
    with pytest.raises(KdkitError, match="at least 1 resample"):
        paired_win_rate("classification", "accuracy", y, y, y, resamples=0)
