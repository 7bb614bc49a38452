from __future__ import annotations

import numpy as np
import pytest

from kdkit.errors import KdkitError
from kdkit.eval.metrics import agreement, check_metrics, compute_metrics, default_metrics


def test_classification_metrics() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0, 1, 1, 1, 0, 0])
    m = compute_metrics("classification", p, y, ["accuracy", "macro_f1", "f1", "mcc"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 / 3)  # precision 2/3, recall 2/3
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["mcc"] == pytest.approx(1 / 3)
    perfect = compute_metrics("classification", y, y, ["accuracy", "mcc"])
    assert perfect == {"accuracy": 1.0, "mcc": 1.0}


def test_regression_metrics() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    m = compute_metrics("regression", 2 * y + 1, y, ["pearson", "spearman", "mse"])
    assert m["pearson"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    assert m["mse"] == pytest.approx(np.mean((y + 1) ** 2))
    assert (
        compute_metrics("regression", np.zeros(4), y, ["pearson"])["pearson"] == 0.0
    )  # constant: defined as 0


def test_defaults_and_checks() -> None:
    assert default_metrics("classification", 2) == ["accuracy", "macro_f1", "f1", "mcc"]
    assert "f1" not in default_metrics("classification", 3)
    assert default_metrics("regression", 1) == ["pearson", "spearman", "mse"]
    with pytest.raises(KdkitError, match="did you mean 'accuracy'"):
        check_metrics("classification", ["acuracy"])
    with pytest.raises(KdkitError, match="needs 2 classes"):
        check_metrics("classification", ["f1"], 3)
    with pytest.raises(KdkitError, match="does not apply to regression"):
        check_metrics("regression", ["accuracy"])


def test_agreement() -> None:
    assert agreement("classification", np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    assert agreement("regression", np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == pytest.approx(1.0)
