"""Is the teacher worth distilling? Its validation metric against what a model that learnt nothing scores.

A teacher that did not learn the task (too few fine-tuning epochs, a bad learning rate, inputs cut short)
gives the student nothing to learn from, and the student's numbers then say nothing about the method.
Before a student trains, kdkit compares the teacher's validation metric (the run's best metric:
``train.best_metric``, else accuracy or Pearson) with the *baseline*, the same metric of a constant
predictor (the majority class; the mean of the labels for regression), and says so in one line when the
teacher is not clearly above it. ``teacher.check: false`` distils anyway.

*Clearly above* = beyond two standard errors of the metric on the n validation examples, where the
baseline lies (so a teacher that merely got lucky on a small validation set is not taken for one that
learnt):

| metric | baseline | the teacher needs at least |
|---|---|---|
| accuracy | majority-class rate b | b + 2 sqrt(b (1 - b) / n) |
| macro_f1 | the constant predictor's | baseline + 1 / sqrt(n) (2 standard errors of a proportion near 1/2) |
| mcc, pearson, spearman | 0 | 2 / sqrt(n) (2 standard errors of a correlation near 0) |
| f1 (the positive class's) | judged by mcc instead (see below) | 2 / sqrt(n) in mcc |
| mse (lower is better) | the labels' variance v | at most v (1 - 2 sqrt(2 / (n - 1))) |

Chance (a uniform guess: 1 / classes) is reported beside accuracy; the majority class is never below it.

Why F1 is judged by MCC: when the positive class is the majority (MRPC: 68%), predicting "positive" for
every pair already scores F1 0.81, and F1 moves little between that and a teacher that learnt the task:
a MiniLM-L6 MRPC teacher at F1 0.823, accuracy 0.747 and MCC 0.42 would fail an F1 bar of 0.81 + 1/sqrt(n).
MCC is the chance-corrected summary of the same confusion matrix (0 for every constant predictor), so it
separates a teacher that learnt from one that did not without that bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kdkit.eval.metrics import compute_metrics, greater_is_better


@dataclass(frozen=True)
class TeacherVerdict:
    """The teacher's metric, the baseline's, the value it needed and on how many examples."""

    task: str
    metric: str
    teacher: float
    baseline: float
    needed: float
    n: int
    chance: float | None = None  # accuracy only: 1 / classes
    instead_of: str | None = None  # the run's metric, when the check judges another one (f1 -> mcc)

    @property
    def ok(self) -> bool:
        return self.teacher >= self.needed if greater_is_better(self.metric) else self.teacher <= self.needed

    def describe(self) -> str:
        """One line: the teacher's value against the baseline's (and chance), and the bar it had to pass."""
        kind = "mean predictor" if self.task == "regression" else "majority class"
        chance = f", chance {self.chance:.4f}" if self.chance is not None else ""
        side = "at least" if greater_is_better(self.metric) else "at most"
        why = (
            f"; {self.instead_of} is judged by {self.metric}, 0 for any constant predictor"
            if self.instead_of
            else ""
        )
        return (
            f"the teacher's validation {self.metric} is {self.teacher:.4f} against {self.baseline:.4f} for the "
            f"{kind}{chance} on {self.n} examples (clearly above needs {side} {self.needed:.4f}{why})"
        )


def judged_metric(metric: str) -> str:
    """The metric the check judges for a run whose best metric is ``metric``: the positive class's F1 is
    judged by MCC (see the module docstring), every other metric by itself."""
    return "mcc" if metric == "f1" else metric


def judge(
    task: str, metric: str, teacher_value: float, labels: np.ndarray, instead_of: str | None = None
) -> TeacherVerdict | None:
    """The verdict on a teacher scoring ``teacher_value`` in ``metric`` on validation ``labels``; None for a
    metric this check has no baseline for. ``instead_of``: the run's metric when ``metric`` stands in for it."""
    labels = np.asarray(labels)
    n = int(labels.shape[0])
    if n == 0 or metric not in _MARGINS:
        return None
    if task == "regression":
        constant = np.full(n, float(labels.mean()))
    else:
        values, counts = np.unique(labels, return_counts=True)
        constant = np.full(n, values[int(counts.argmax())])
    baseline = compute_metrics(task, constant, labels, [metric])[metric]
    chance = None
    if metric == "accuracy":
        needed = baseline + 2 * math.sqrt(baseline * (1 - baseline) / n)
        chance = 1 / max(len(np.unique(labels)), 2)
    elif metric in ("macro_f1", "f1"):  # f1 reaches here only when called directly
        needed = baseline + 1 / math.sqrt(n)
    elif metric in ("mcc", "pearson", "spearman"):
        needed = baseline + 2 / math.sqrt(n)
    else:  # mse
        needed = baseline * (1 - 2 * math.sqrt(2 / max(n - 1, 1)))
    return TeacherVerdict(
        task, metric, float(teacher_value), float(baseline), float(needed), n, chance, instead_of
    )


_MARGINS = ("accuracy", "macro_f1", "f1", "mcc", "pearson", "spearman", "mse")
FIX = (
    "train it more or better first (teacher.finetune: more epochs, another lr, a longer teacher.max_length), "
    "or set teacher.check: false to distil it anyway"
)
