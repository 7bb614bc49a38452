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
them. The choice is stored in the run (metrics.json ``inference_settings``) and its model card; predictions
(`kdkit predict`, ``ReAugPredictor``) use it. Report metrics with the chosen settings on other data than
validation (a test split), since validation chose them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from kdkit.errors import KdkitError
from kdkit.eval.metrics import compute_metrics, greater_is_better
from kdkit.losses.relational import aggregate_neighbours, retrieval_augmented
from kdkit.retrieval.kb import KnowledgeBase

BETAS = tuple(i / 10 for i in range(11))
KS = (16, 4, 8, 32, 64)
TAUS = (0.1, 0.02, 0.05, 0.2, 0.5, 1.0)
CHOSEN_ON = "validation"


@dataclass
class Choice:
    """The chosen settings and what they scored on the split they were chosen on."""

    beta: float
    k: int
    tau: float
    metric: str
    value: float  # the metric with retrieval at the chosen settings
    student_alone: float  # the metric of the student alone (beta 0)
    chosen_on: str = CHOSEN_ON

    def describe(self) -> str:
        return (
            f"beta {self.beta:g}, k {self.k}, tau {self.tau:g}, chosen on {self.chosen_on} by {self.metric}: "
            f"{self.value:.4f} with retrieval, {self.student_alone:.4f} for the student alone"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "description": self.describe()}


def choose_settings(
    logits: Tensor, embeddings: Tensor, labels: Tensor, kb: KnowledgeBase, task: str, metric: str
) -> Choice:
    """The grid's best settings for the student's ``logits`` (N, C) and ``embeddings`` (N, D) on examples
    with ``labels`` (N,) that are not in the KB."""
    if len(labels) == 0:
        raise KdkitError("method.beta: auto needs a non-empty validation split to choose beta on")
    higher = greater_is_better(metric)
    probs = torch.softmax(logits.float(), dim=-1)
    truth = labels.numpy()

    def score(p: Tensor) -> float:
        return float(compute_metrics(task, p.argmax(-1).numpy(), truth, [metric])[metric])

    ks = [k for k in KS if k <= len(kb)] or [len(kb)]
    sims, ids = kb.search(embeddings, max(ks))  # (N, k_max), nearest first
    neighbour_labels = kb.soft_labels[ids.clamp(min=0)]  # (N, k_max, C)
    alone = score(probs)
    best = Choice(0.0, ks[0], TAUS[0], metric, alone, alone)
    for k in ks:
        for tau in TAUS:
            retrieved = aggregate_neighbours(sims[:, :k], neighbour_labels[:, :k], tau).to(probs.device)
            for beta in BETAS[1:]:
                value = score(retrieval_augmented(probs, retrieved, beta))
                if (value > best.value if higher else value < best.value) or (
                    value == best.value and beta < best.beta
                ):
                    best = Choice(beta, k, tau, metric, value, alone)
    return best
