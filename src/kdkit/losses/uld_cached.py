"""Cross-tokenizer losses against a cached teacher (``kdkit cache``): ULD and the hybrid when only the
teacher's top-k log-probabilities at each of its positions were kept (``kdkit.family.cross_cache``).

Each aligned span reads the cache row of its first teacher token and the target log-probabilities of its
other teacher tokens (the merge factor, ``cached_span_rows``).

- **ULD** (``cached_uld_loss``): the k largest teacher probabilities compared exactly with the student's k
  largest, and the rest by mass: ``sorted_l1`` with ``top_k = k``, so the live loss with ``method.top_k: k``
  (tested equal).
- **Hybrid** (``cached_hybrid_loss``): the cache also keeps each row's teacher mass on the shared
  sub-vocabulary (``matched_mass``). The matched part is the divergence between the two distributions over
  the shared tokens coarse-grained to (the teacher's top-k tokens that are shared, one tail class): the same
  reduction as the same-tokenizer cache's (``kdkit.losses.topk``), a lower bound of the divergence over the
  full shared sub-vocabulary (data processing inequality), exact when the cache holds every token. The
  unmatched part is ULD on the unshared entries: the unshared tokens among the teacher's top-k (its largest
  unshared ones; their number varies by row) compared exactly with as many of the student's largest, the
  rest by mass, a lower bound of the exact term. With k = Vt both equal the live hybrid (tested).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.losses.chunked import _chunk_logits, _Head, _run_chunks
from kdkit.losses.divergences import DIVERGENCES, _check_temperature, token_divergence
from kdkit.losses.uld import _check_top_k, _first_rows, _rows_of, _uld_chunks, span_log_factors


def cached_uld_loss(
    student_hidden: Tensor,
    student_weight: Tensor | None,
    *,
    teacher_logprobs: Tensor,
    teacher_log_factors: Tensor,
    student_targets: Tensor,
    student_groups: Tensor,
    student_first: Tensor,
    num_groups: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    student_bias: Tensor | None = None,
    student_vocab: int | None = None,
    chunk_size: int = 256,
) -> tuple[Tensor, dict[str, Tensor]]:
    """ULD over aligned spans against a cached teacher: ``aligned_cross_tokenizer_loss`` with ``top_k`` = k,
    the teacher known by its top-k log-probabilities at each span's first position.

    Args:
        student_hidden, student_weight, student_targets/groups/first, num_groups: the student side, as in
            ``aligned_cross_tokenizer_loss``.
        teacher_logprobs: (G, k) the teacher's top-k log-probabilities (at ``temperature``) predicting each
            span's first token, in span order; the dropped mass is ``1 - sum(exp)``.
        teacher_log_factors: (G,) the log of each span's teacher merge factor (its later tokens'
            log-probabilities summed; 0 for a one-token teacher span).
        top_k: compare the ``min(top_k, k)`` largest entries (None: all k the cache holds).

    Equal to ``aligned_cross_tokenizer_loss(..., top_k=k)`` with the live teacher whose top-k these are.
    """
    _check_temperature(temperature)
    _check_top_k(top_k)
    if teacher_logprobs.shape[0] != num_groups or teacher_log_factors.shape != (num_groups,):
        raise ValueError(
            f"the cached teacher has {teacher_logprobs.shape[0]} span rows and {tuple(teacher_log_factors.shape)} "
            f"factors for {num_groups} spans"
        )
    s_vocab = _rows_of(student_hidden, student_weight) if student_vocab is None else student_vocab
    f_s = span_log_factors(
        student_hidden, student_weight, student_targets, student_groups, student_first, num_groups,
        temperature=temperature, bias=student_bias, vocab_size=s_vocab, chunk_size=chunk_size,
    )  # fmt: skip
    q = teacher_logprobs.float().exp()  # (G, k)
    if top_k is not None and top_k < q.shape[-1]:
        q = q.sort(dim=-1, descending=True).values[:, :top_k]
    scale = teacher_log_factors.float().exp()
    held = teacher_logprobs.float().exp().sum(-1)  # (G,) the cached top-k's mass
    q_rest = ((1.0 - held).clamp_min(0.0) + held - q.sum(-1)) * scale  # the tail + entries beyond top_k
    q = q * scale.unsqueeze(-1)
    s_rows = _first_rows(student_hidden, student_groups, student_first, num_groups)
    student = _Head(s_rows, student_weight, student_bias, None, s_vocab)
    q = q.sort(dim=-1, descending=True).values  # (G, k) the head, as _SortedL1 reads it

    def teacher(a: int, b: int) -> tuple[Tensor, Tensor]:
        return q[a:b], q_rest[a:b]

    total = _uld_chunks(student, teacher, f_s, temperature, chunk_size)
    loss = total / max(num_groups, 1)
    return loss, {"uld": loss.detach()}


def cached_span_rows(
    target_logprobs: Tensor, groups: Tensor, first: Tensor, rows: Tensor, num_groups: int
) -> tuple[Tensor, Tensor]:
    """Where each span's cached teacher is: the cache row of its base teacher position (G,, marked in
    ``first``: the span's first token, or its last under GOLD's other merge rule), and its log merge factor
    (G,), the other positions' target log-probabilities summed.

    ``target_logprobs`` (n,) are the cache's; ``groups``/``first`` (B, T) the teacher's spans (shifted, as
    ``span_log_factors``); ``rows`` (B, T) the cache row of each position (read only where ``groups >= 0``).
    """
    flat_groups, flat_rows = groups.reshape(-1), rows.reshape(-1)
    flat_first = first.reshape(-1)
    heads = flat_first.nonzero().squeeze(-1)
    order = torch.empty(num_groups, dtype=torch.long, device=rows.device)
    order[flat_groups.index_select(0, heads)] = flat_rows.index_select(0, heads)
    rest = ((flat_groups >= 0) & ~flat_first).nonzero().squeeze(-1)
    factors = torch.zeros(num_groups, dtype=torch.float32, device=rows.device).index_add(
        0,
        flat_groups.index_select(0, rest),
        target_logprobs.float().index_select(0, flat_rows.index_select(0, rest)),
    )
    return order, factors


def cached_hybrid_loss(
    student_hidden: Tensor,
    student_weight: Tensor | None,
    *,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    teacher_matched_mass: Tensor,
    teacher_log_factors: Tensor,
    teacher_to_student: Tensor,
    student_matched: Tensor,
    student_targets: Tensor,
    student_groups: Tensor,
    student_first: Tensor,
    num_groups: int,
    divergence: str = "generalized_jsd",
    divergence_kwargs: dict[str, Any] | None = None,
    matched_weight: float = 0.5,
    unmatched_weight: float = 0.5,
    temperature: float = 1.0,
    top_k: int | None = None,
    student_bias: Tensor | None = None,
    student_vocab: int | None = None,
    chunk_size: int = 256,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The hybrid over aligned spans against a cached teacher (module docstring).

    Args:
        teacher_ids, teacher_logprobs: (G, k) the teacher's top-k ids and log-probabilities (at
            ``temperature``) predicting each span's first token, in span order.
        teacher_matched_mass: (G,) the teacher's probability of the shared sub-vocabulary there.
        teacher_log_factors: (G,) the log of each span's teacher merge factor.
        teacher_to_student: (Vt,) int64, the student id of each shared teacher token, -1 elsewhere.
        student_matched: (M,) the student ids of the shared tokens.
        top_k: compare the ``min(top_k, k)`` largest unshared entries exactly (None: all k).
        the rest: as ``aligned_cross_tokenizer_loss``.

    Returns (the weighted sum's mean over spans, {"uld", "matched"} each term's mean).
    """
    _check_temperature(temperature)
    _check_top_k(top_k)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    kw = divergence_kwargs or {}
    s_vocab = _rows_of(student_hidden, student_weight) if student_vocab is None else student_vocab
    f_s = span_log_factors(
        student_hidden, student_weight, student_targets, student_groups, student_first, num_groups,
        temperature=temperature, bias=student_bias, vocab_size=s_vocab, chunk_size=chunk_size,
    )  # fmt: skip
    scale = teacher_log_factors.float().exp()  # (G,)
    q = teacher_logprobs.float().exp() * scale.unsqueeze(-1)  # (G, k)
    partner = teacher_to_student.index_select(0, teacher_ids.reshape(-1)).view_as(teacher_ids)  # (G, k)
    shared = partner >= 0
    q_shared = q.masked_fill(~shared, 0.0)
    q_tail = (teacher_matched_mass.float() * scale - q_shared.sum(-1)).clamp_min(
        0.0
    )  # shared, past the top-k
    q_free = q.masked_fill(shared, 0.0).sort(dim=-1, descending=True).values  # (G, k) unshared, descending
    width = q.shape[-1] if top_k is None else min(top_k, q.shape[-1])
    q_free = q_free[:, :width]
    # row by row, the unshared teacher entries known: the unshared ones among its top-k (the largest
    # unshared ones), at most ``width``; the student's as many largest are compared with them
    known = torch.arange(width, device=q.device) < (~shared).sum(-1, keepdim=True)  # (G, width)
    q_free_rest = ((1.0 - teacher_matched_mass.float()) * scale - (q_free * known).sum(-1)).clamp_min(0.0)
    s_rows = _first_rows(student_hidden, student_groups, student_first, num_groups)
    student = _Head(s_rows, student_weight, student_bias, None, s_vocab)
    tiny = torch.finfo(torch.float32).tiny

    def chunk(
        hs: Tensor, ws: Tensor, bs: Tensor | None, fs: Tensor, ids: Tensor, ok: Tensor, qs: Tensor,
        qt: Tensor, qf: Tensor, kn: Tensor, qr: Tensor,
    ) -> tuple[Tensor, ...]:  # fmt: skip
        p = F.softmax(_chunk_logits(hs, ws, bs) / temperature, dim=-1) * fs.exp().unsqueeze(-1)  # (c, Vs)
        # shared tokens: (the teacher's shared top-k, one tail class) on each side, renormalised
        p_top = p.gather(-1, ids.clamp_min(0)).masked_fill(~ok, 0.0)  # (c, k)
        p_tail = (p.index_select(-1, student_matched).sum(-1) - p_top.sum(-1)).clamp_min(0.0)
        ps = torch.cat([p_top, p_tail.unsqueeze(-1)], -1)
        qm = torch.cat([qs, qt.unsqueeze(-1)], -1)
        log_p = (ps / ps.sum(-1, keepdim=True).clamp_min(tiny)).clamp_min(tiny).log()
        log_q = (qm / qm.sum(-1, keepdim=True).clamp_min(tiny)).clamp_min(tiny).log()
        m = token_divergence(divergence, log_p, log_q, temperature=1.0, **kw)  # (c,)
        # unshared tokens: ULD, the k largest of each side exactly, the rest by mass
        free = p.index_fill(-1, student_matched, 0.0)
        top = free.topk(min(width, free.shape[-1]), dim=-1).values
        top = F.pad(top, (0, width - top.shape[-1])) * kn
        u = ((top - qf).abs() * kn).sum(-1) + ((free.sum(-1) - top.sum(-1)) - qr).abs()
        return (matched_weight * m.sum() + unmatched_weight * u.sum(), u.sum(), m.sum())

    extras = [f_s, partner, shared, q_shared, q_tail, q_free, known, q_free_rest]
    sums = _run_chunks(chunk, student, extras, chunk_size)
    n = max(num_groups, 1)
    return sums[0] / n, {"uld": (sums[1] / n).detach(), "matched": (sums[2] / n).detach()}
