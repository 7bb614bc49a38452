"""Task metrics: accuracy, macro-F1, F1 of the positive class, Matthews correlation, Pearson, Spearman,
and student-teacher agreement. Inputs are NumPy arrays of predictions (class ids or real values).

Causal LMs have their own metrics, computed from a model rather than arrays (``kdkit.eval.lm``): perplexity
of the response tokens (lower is better) and ROUGE-L x100 of greedy generations; their names live here too so
that defaults, checks and "is higher better" answer for every task in one place."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from kdkit.errors import KdkitError, did_you_mean


def _pearson(pred: np.ndarray, y: np.ndarray) -> float:
    if np.std(pred) == 0 or np.std(y) == 0:
        return 0.0  # undefined for a constant; 0 is the honest "no linear relation"
    return float(pearsonr(pred, y)[0])


def _spearman(pred: np.ndarray, y: np.ndarray) -> float:
    if np.std(pred) == 0 or np.std(y) == 0:
        return 0.0
    return float(spearmanr(pred, y)[0])


CLASSIFICATION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, y: float(accuracy_score(y, p)),
    "macro_f1": lambda p, y: float(f1_score(y, p, average="macro", zero_division=0)),
    "f1": lambda p, y: float(f1_score(y, p, pos_label=1, average="binary", zero_division=0)),
    "mcc": lambda p, y: float(matthews_corrcoef(y, p)),
}
REGRESSION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": _pearson,
    "spearman": _spearman,
    "mse": lambda p, y: float(np.mean((p - y) ** 2)),
}
# computed by kdkit.eval.lm.perplexity (bits per byte / char: tokenizer-free) and generation_scores (ROUGE-L)
CAUSAL_LM = ("perplexity", "bits_per_byte", "bits_per_char", "rouge_l")


def default_metrics(task: str, num_labels: int) -> list[str]:
    """Classification: accuracy, macro_f1, plus f1 (positive class) and mcc for binary tasks.
    Regression: pearson, spearman, mse. Causal LM: perplexity, rouge_l."""
    if task == "causal_lm":
        return list(CAUSAL_LM)
    if task == "regression":
        return ["pearson", "spearman", "mse"]
    return ["accuracy", "macro_f1", "f1", "mcc"] if num_labels == 2 else ["accuracy", "macro_f1", "mcc"]


def default_best_metric(task: str) -> str:
    return {"regression": "pearson", "causal_lm": "perplexity"}.get(task, "accuracy")


def greater_is_better(metric: str) -> bool:
    # suffixes, so that prefixed names ("teacher_mse", "validation_perplexity") answer the same
    return not metric.endswith(("mse", "loss", "perplexity", "nll", "bits_per_byte", "bits_per_char"))


def check_metrics(task: str, names: list[str], num_labels: int | None = None) -> None:
    table = {"regression": REGRESSION, "causal_lm": CAUSAL_LM}.get(task, CLASSIFICATION)
    for name in names:
        if name not in table:
            raise KdkitError(
                f"metric '{name}' does not apply to {task}{did_you_mean(name, table)}; known: {', '.join(table)}"
            )
        if name == "f1" and num_labels is not None and num_labels != 2:
            raise KdkitError("metric 'f1' (positive class) needs 2 classes; use macro_f1")


def compute_metrics(
    task: str, predictions: np.ndarray, labels: np.ndarray, names: list[str]
) -> dict[str, float]:
    """``{name: value}`` for predictions (class ids, or real values for regression) against labels."""
    if task == "causal_lm":
        raise KdkitError(
            "compute_metrics is for classifiers and regressors; causal-LM metrics: kdkit.eval.lm"
        )
    check_metrics(task, names)
    table = REGRESSION if task == "regression" else CLASSIFICATION
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    return {name: table[name](predictions, labels) for name in names}


def agreement(task: str, student_pred: np.ndarray, teacher_pred: np.ndarray) -> float:
    """Fraction of identical predicted classes, or Pearson r between predictions for regression."""
    if task == "regression":
        return _pearson(
            np.asarray(student_pred, dtype=np.float64), np.asarray(teacher_pred, dtype=np.float64)
        )
    return float(np.mean(np.asarray(student_pred) == np.asarray(teacher_pred)))
