"""ReAugKD's inference settings chosen on held-out data (``method.beta: auto``, the default).

The paper (Zhang et al., ACL 2023, Section 3) fixes ``beta = 0.5`` for the mix of retrieved soft labels and
the student's own prediction. With a small student whose embeddings find poor neighbours, a fixed 0.5 can
make predictions worse than the student alone. So after training, kdkit searches the grid below on the
validation split and keeps the best settings by the run's selection metric (``train.best_metric``, else
the task's first metric):

- beta in 0, 0.1, ..., 1 (beta 0 is the student alone, so the choice is never worse than it on validation);
- retrieval_k in 16, 4, 8, 32, 64 (at most the KB's size);
- retrieval_tau in 0.1, 0.02, 0.05, 0.2, 0.5, 1.

Ties go to the smaller beta, then to the paper's k 16 and tau 0.1 (the lists' first entries). One student
pass and one KB search (the 64 nearest neighbours) serve the whole grid: a smaller k takes the first k of
them.

The grid's best is kept only when it beats the student alone with confidence (kdkit's rule; the paper
fixes beta): on at least ``confidence`` (``method.beta_confidence``, default 0.95) of 1,000 paired
bootstrap resamples of the validation split (``kdkit.eval.bootstrap``), the grid's best scores strictly
better than the student alone; otherwise beta is 0 and predictions are the student's own. Why: on a few
hundred validation examples, a best-of-330 grid beats the student alone by a point of noise easily, and
that noise then costs on new data. The bootstrap scores the grid's best as chosen, so it does not correct
for the search itself; the high default leaves that margin. ``confidence`` 0 keeps the grid's best
whatever its margin.

The choice (and, when the student alone was kept, the grid's best it turned down) is stored in the run
(metrics.json ``inference_settings``) and its model card; predictions (`kdkit predict`,
``ReAugPredictor``) use it. Report metrics with the chosen settings on other data than validation (a test
split), since validation chose them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdkit.errors import KdkitError
from kdkit.eval.bootstrap import RESAMPLES, paired_win_rate
from kdkit.eval.metrics import compute_metrics, greater_is_better
from kdkit.losses.relational import aggregate_neighbours, retrieval_augmented
from kdkit.retrieval.kb import KnowledgeBase

BETAS = tuple(i / 10 for i in range(11))
KS = (16, 4, 8, 32, 64)
TAUS = (0.1, 0.02, 0.05, 0.2, 0.5, 1.0)
CHOSEN_ON = "validation"
CONFIDENCE = 0.95  # the default share of paired resamples on which retrieval must beat the student alone


@dataclass
class Choice:
    """The chosen settings and what they scored on the split they were chosen on.

    ``support``: the share of paired bootstrap resamples on which the grid's best beat the student alone
    (None when no setting beat it at all); ``declined``: the grid's best, when ``support`` fell short of
    ``confidence`` and the student alone was kept instead (its ``beta``, ``k``, ``tau`` and ``value``).
    """

    beta: float
    k: int
    tau: float
    metric: str
    value: float  # the metric with retrieval at the chosen settings (the student alone's when beta is 0)
    student_alone: float  # the metric of the student alone (beta 0)
    chosen_on: str = CHOSEN_ON
    confidence: float = CONFIDENCE
    support: float | None = None
    declined: dict[str, Any] | None = None

    def describe(self) -> str:
        head = f"chosen on {self.chosen_on} by {self.metric}"
        if self.declined is not None:
            d = self.declined
            return (
                f"beta 0 (the student alone), {head}: {self.student_alone:.4f}; the grid's best (beta "
                f"{d['beta']:g}, k {d['k']}, tau {d['tau']:g}: {d['value']:.4f}) beat the student alone on "
                f"only {self.support:.1%} of {RESAMPLES} paired resamples, under the {self.confidence:.1%} "
                "asked (method.beta_confidence)"
            )
        text = (
            f"beta {self.beta:g}, k {self.k}, tau {self.tau:g}, {head}: {self.value:.4f} with retrieval, "
            f"{self.student_alone:.4f} for the student alone"
        )
        if self.support is None:
            return text + " (no setting beat the student alone)"
        return text + f" (better on {self.support:.1%} of {RESAMPLES} paired resamples)"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "description": self.describe()}


def choose_settings(
    logits: Tensor,
    embeddings: Tensor,
    labels: Tensor,
    kb: KnowledgeBase,
    task: str,
    metric: str,
    confidence: float = CONFIDENCE,
) -> Choice:
    """The grid's best settings for the student's ``logits`` (N, C) and ``embeddings`` (N, D) on examples
    with ``labels`` (N,) that are not in the KB, kept if they beat the student alone on at least
    ``confidence`` of the paired bootstrap resamples (else beta 0)."""
    if len(labels) == 0:
        raise KdkitError("method.beta: auto needs a non-empty validation split to choose beta on")
    higher = greater_is_better(metric)
    probs = torch.softmax(logits.float(), dim=-1)
    truth = labels.numpy()

    def score(pred: np.ndarray) -> float:
        return float(compute_metrics(task, pred, truth, [metric])[metric])

    ks = [k for k in KS if k <= len(kb)] or [len(kb)]
    sims, ids = kb.search(embeddings, max(ks))  # (N, k_max), nearest first
    neighbour_labels = kb.soft_labels[ids.clamp(min=0)]  # (N, k_max, C)
    alone_pred = probs.argmax(-1).numpy()
    alone = score(alone_pred)
    best, best_pred = Choice(0.0, ks[0], TAUS[0], metric, alone, alone, confidence=confidence), alone_pred
    for k in ks:
        for tau in TAUS:
            retrieved = aggregate_neighbours(sims[:, :k], neighbour_labels[:, :k], tau).to(probs.device)
            for beta in BETAS[1:]:
                pred = retrieval_augmented(probs, retrieved, beta).argmax(-1).numpy()
                value = score(pred)
                if (value > best.value if higher else value < best.value) or (
                    value == best.value and beta < best.beta
                ):
                    best = Choice(beta, k, tau, metric, value, alone, confidence=confidence)
                    best_pred = pred
    if best.beta == 0:
        return best
    best.support = paired_win_rate(task, metric, best_pred, alone_pred, truth)
    if best.support >= confidence:
        return best
    declined = {"beta": best.beta, "k": best.k, "tau": best.tau, "value": best.value}
    return Choice(
        0.0,
        ks[0],
        TAUS[0],
        metric,
        alone,
        alone,
        confidence=confidence,
        support=best.support,
        declined=declined,
    )
