"""Loss math for ReAugKD (Zhang et al., "ReAugKD: Retrieval-Augmented Knowledge Distillation For
Pre-trained Language Models", ACL 2023, Section 3) and the supervised contrastive loss that trains its
teacher projection head (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, Eq. 2, L_out).

Similarities are cosine (embeddings are L2-normalised here). Pure tensor math, no I/O.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_NEG = -1e4  # logit for excluded candidates: exp() underflows to 0 in fp32, no -inf NaNs in softmax grads


def supcon_loss(embeddings: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    """Supervised contrastive loss L_out (Khosla et al. 2020, Eq. 2) over a batch.

    For anchor i with positives P(i) (same label, i excluded) and all others A(i) (i excluded):
    ``-1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) )``,
    averaged over anchors that have at least one positive (0, still connected, if none has).

    Args:
        embeddings: (N, D), normalised here.
        labels: (N,) int class ids.
        temperature: tau > 0; 0.07 in the paper.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(embeddings.float(), dim=-1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, _NEG)  # (N, N), self excluded from A(i)
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    positives = (labels.view(-1, 1) == labels.view(1, -1)) & ~eye  # (N, N)
    count = positives.sum(-1)  # (N,)
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(-1)) / count.clamp(min=1)
    has = count > 0
    return per_anchor.masked_fill(~has, 0.0).sum() / has.sum().clamp(min=1)


def relational_kl(
    student_query: Tensor,
    teacher_query: Tensor,
    teacher_keys: Tensor,
    key_mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """ReAugKD's relational loss: ``mean_i KL(P_TT(i) || P_ST(i))`` over each example's candidates.

    ``P_TT(i, j) = softmax_j(sim(z_T_i, k_j) / tau)`` and ``P_ST(i, j) = softmax_j(sim(z_S_i, k_j) / tau)``,
    with k_j the teacher embeddings of example i's candidate set (its KB neighbours plus the batch, itself
    excluded: the caller builds ``teacher_keys`` and masks what does not count).

    Args:
        student_query: (N, D) student embeddings z_S (in the teacher-projection space, same D).
        teacher_query: (N, D) projected teacher embeddings z_T of the same examples.
        teacher_keys: (N, M, D) candidate teacher embeddings per example, or (M, D) shared by all.
        key_mask: (N, M) bool, True where a candidate counts; None: all count. A row without any counted
            candidate contributes 0.
        temperature: tau > 0.

    Returns:
        Scalar, >= 0; exactly 0 when the student queries equal the teacher queries.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = F.normalize(student_query.float(), dim=-1)  # (N, D)
    t = F.normalize(teacher_query.float(), dim=-1).detach()
    keys = F.normalize(teacher_keys.float(), dim=-1).detach()
    if keys.dim() == 2:
        keys = keys.unsqueeze(0).expand(s.shape[0], -1, -1)  # (N, M, D)
    sim_t = torch.einsum("nd,nmd->nm", t, keys) / temperature  # (N, M)
    sim_s = torch.einsum("nd,nmd->nm", s, keys) / temperature
    if key_mask is not None:
        sim_t = sim_t.masked_fill(~key_mask, _NEG)
        sim_s = sim_s.masked_fill(~key_mask, _NEG)
    log_p = F.log_softmax(sim_t, dim=-1)
    log_q = F.log_softmax(sim_s, dim=-1)
    kl = log_p.exp() * (log_p - log_q)  # (N, M)
    if key_mask is not None:
        kl = kl.masked_fill(~key_mask, 0.0)
        rows = key_mask.any(-1)
        return kl.sum(-1).masked_fill(~rows, 0.0).sum() / rows.sum().clamp(min=1)
    return kl.sum(-1).mean()


def query_alignment(student_query: Tensor, teacher_query: Tensor) -> Tensor:
    """``mean_i (1 - cos(z_S_i, z_T_i))``: each student query against the teacher's embedding of the same
    example (its KB key). Not in ReAugKD's paper (kdkit's ``align_weight``, 0 by default): the relational
    loss matches the student's similarities over each example's candidates only, so a student query can
    satisfy it and still lie nearer other KB keys than the teacher's query does; this term pulls the query
    to where the teacher's would retrieve from.

    Args:
        student_query: (N, D) student embeddings.
        teacher_query: (N, D) teacher embeddings of the same examples (no gradient).

    Returns:
        Scalar in [0, 2]; exactly 0 when every student query points as the teacher's does.
    """
    s = F.normalize(student_query.float(), dim=-1)
    t = F.normalize(teacher_query.float(), dim=-1).detach()
    return (1.0 - (s * t).sum(-1)).mean()


def aggregate_neighbours(similarities: Tensor, soft_labels: Tensor, temperature: float = 1.0) -> Tensor:
    """ReAugKD inference: the neighbours' teacher soft labels averaged with weights softmax(sim / tau).

    Args:
        similarities: (N, k) cosine similarities of each query to its k retrieved KB entries.
        soft_labels: (N, k, C) the entries' teacher probabilities.
        temperature: tau > 0.

    Returns:
        (N, C) distributions.
    """
    weights = torch.softmax(similarities.float() / temperature, dim=-1)  # (N, k)
    return torch.einsum("nk,nkc->nc", weights, soft_labels.float())


def retrieval_augmented(student_probs: Tensor, retrieved: Tensor, beta: float = 0.5) -> Tensor:
    """``beta * retrieved + (1 - beta) * student_probs``: ReAugKD's final prediction (beta 0.5 default)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return beta * retrieved.float() + (1.0 - beta) * student_probs.float()
