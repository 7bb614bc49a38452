"""Vanilla knowledge distillation losses (Hinton, Vinyals and Dean, 2015, arXiv 1503.02531).

Hinton et al. train the student on a weighted sum of the cross-entropy with the hard labels and the
cross-entropy with the teacher's soft targets at temperature T; the soft term's gradients scale as 1/T^2,
so it is multiplied by T^2 "to keep the relative contributions roughly unchanged" (Section 2). Using the
KL divergence instead of the soft cross-entropy changes the loss by the teacher's entropy, a constant, so
the gradients are the same and the loss is exactly 0 when the student matches the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-example KL(softmax(t/T) || softmax(s/T)).

    Args:
        student_logits: (N, C).
        teacher_logits: (N, C), same class order.
        temperature: T > 0.

    Returns:
        (N,) KL divergences (without the T^2 factor), >= 0.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, C)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (N, C)
    return (log_p.exp() * (log_p - log_q)).sum(-1)  # (N,)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.5,
) -> Tensor:
    """Hinton KD: ``alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Args:
        student_logits: (N, C) student logits.
        teacher_logits: (N, C) teacher logits (detached by the caller or not; no gradient is needed).
        labels: (N,) int64 class ids, or None. With None there is no hard-label term and the
            distillation term gets the full weight (alpha is ignored).
        temperature: T > 0, softens both distributions; the KL term is scaled by T^2.
        alpha: weight of the hard-label cross-entropy, in [0, 1].

    Returns:
        Scalar: the mean over the N examples.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    distill = temperature**2 * soft_kl(student_logits, teacher_logits, temperature).mean()
    if labels is None:
        return distill
    ce = F.cross_entropy(student_logits.float(), labels)
    return alpha * ce + (1.0 - alpha) * distill


def kd_mse_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    alpha: float = 0.5,
    regression: bool = False,
) -> Tensor:
    """KD with the mean squared error between logits (the choice for regression; Ba and Caruana 2014).

    ``alpha * task(s, y) + (1 - alpha) * mean_i ||s_i - t_i||^2 / C``, where task is CE for
    classification and MSE for regression.

    Args:
        student_logits: (N, C); for regression C = 1 (or shape (N,)).
        teacher_logits: same shape as student_logits.
        labels: (N,) int64 class ids (classification) or float targets (regression), or None
            (distillation term only, full weight).
        alpha: weight of the task term, in [0, 1].
        regression: labels are real targets; the task term is MSE.

    Returns:
        Scalar mean over the batch.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    distill = F.mse_loss(student_logits.float(), teacher_logits.float())
    if labels is None:
        return distill
    if regression:
        task = F.mse_loss(student_logits.float().reshape(-1), labels.float().reshape(-1))
    else:
        task = F.cross_entropy(student_logits.float(), labels)
    return alpha * task + (1.0 - alpha) * distill


def hidden_mse(
    student_hidden: list[Tensor],
    teacher_hidden: list[Tensor],
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Mean squared error between paired hidden states, averaged over pairs, real tokens and features.

    Args:
        student_hidden: list of (B, L, H) states, already projected to the teacher's width.
        teacher_hidden: list of (B, L, H) states, paired with student_hidden by position.
        attention_mask: (B, L) with 1 on real tokens; None counts every position.
            Student and teacher must share the tokenization (same L) for token-level pairing.

    Returns:
        Scalar.
    """
    if len(student_hidden) != len(teacher_hidden) or not student_hidden:
        raise ValueError("hidden_mse needs the same non-zero number of student and teacher states")
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_hidden, teacher_hidden, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"hidden shapes differ: student {tuple(s.shape)}, teacher {tuple(t.shape)}")
        sq = (s.float() - t.float()).pow(2).mean(-1)  # (B, L)
        if attention_mask is None:
            total = total + sq.mean()
        else:
            m = attention_mask.to(sq.dtype)
            total = total + (sq * m).sum() / m.sum().clamp_min(1.0)
    return total / len(student_hidden)
