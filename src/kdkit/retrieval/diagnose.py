"""Why retrieval helps or hurts a ReAugKD student: nearest-neighbour diagnostics on held-out data.

ReAugKD's prediction mixes the student's softmax with the teacher soft labels of the KB entries nearest
to the student's embedding (``kdkit.retrieval.predictor``). Retrieval can only help when those neighbours
carry information the student lacks. For each example of a split that is not in the KB, at the run's
inference settings (k, tau), these measure where it stands:

- ``teacher_knn``: the metric of the retrieved labels when the *teacher's* projected embedding queries the
  KB. The keys are teacher embeddings, so this is the ceiling of retrieval with this KB.
- ``student_knn``: the same with the *student's* embedding as the query (what inference does).
- ``student_alone`` and ``teacher``: the metric of their own predictions, for reference.
- ``agree_teacher``: how often the retrieved labels' class equals the teacher's prediction.
- ``agree_student``: how often it equals the student's own prediction. Retrieval that only repeats the
  student cannot correct it; retrieval that disagrees helps only when it is the more accurate of the two.
- ``neighbour_overlap``: the mean fraction of the student query's k neighbours that are among the
  teacher query's k neighbours (1: the student finds exactly the teacher's neighbours).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdkit.eval.metrics import compute_metrics
from kdkit.losses.relational import aggregate_neighbours
from kdkit.retrieval.kb import KnowledgeBase


def teacher_queries(features: Tensor, kb: KnowledgeBase) -> Tensor:
    """The KB's view of the teacher's pooled embeddings (N, D_teacher): projected and L2-normalised
    exactly as the keys were built (``kdkit.retrieval.build``), (N, D)."""
    return F.normalize(features.float() @ kb.projection.T.float(), dim=-1)


def retrieval_diagnostics(
    kb: KnowledgeBase,
    teacher_features: Tensor,
    teacher_logits: Tensor,
    student_embeddings: Tensor,
    student_logits: Tensor,
    labels: Tensor,
    k: int,
    tau: float,
    task: str,
    metric: str,
) -> dict[str, float]:
    """The module docstring's measures for N held-out examples: the teacher's pooled embeddings (N, D_t)
    and logits (N, C), the student's pooled embeddings (N, D) and logits (N, C), gold ``labels`` (N,).
    Metrics in [0, 1] (the task's ``metric``); agreements and overlap are fractions."""
    k = min(k, len(kb))
    truth = labels.numpy()

    def score(pred: Tensor) -> float:
        return float(compute_metrics(task, pred.numpy(), truth, [metric])[metric])

    t_sims, t_ids = kb.search(teacher_queries(teacher_features, kb), k)  # (N, k) each
    s_sims, s_ids = kb.search(student_embeddings, k)
    t_pred = aggregate_neighbours(t_sims, kb.soft_labels[t_ids.clamp(min=0)], tau).argmax(-1)
    s_pred = aggregate_neighbours(s_sims, kb.soft_labels[s_ids.clamp(min=0)], tau).argmax(-1)
    student_pred = student_logits.argmax(-1)
    teacher_pred = teacher_logits.argmax(-1)
    shared = (s_ids.unsqueeze(-1) == t_ids.unsqueeze(-2)) & (s_ids >= 0).unsqueeze(-1)  # (N, k, k)
    return {
        "teacher": score(teacher_pred),
        "student_alone": score(student_pred),
        "teacher_knn": score(t_pred),
        "student_knn": score(s_pred),
        "agree_teacher": float((s_pred == teacher_pred).float().mean()),
        "agree_student": float((s_pred == student_pred).float().mean()),
        "neighbour_overlap": float(shared.any(-1).float().sum(-1).div(k).mean()),
        "k": float(k),
        "tau": float(tau),
        "examples": float(len(labels)),
    }
