"""Losses between a teacher and a student with different vocabularies (cross-tokenizer distillation).

**ULD** (Universal Logit Distillation, Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal
Logit Distillation Loss for LLMs", 2024, Eq. 5-6): at a position, sort both probability vectors in
descending order, pad the shorter one with zeros, and take the L1 distance. It compares the *shapes* of
the two distributions (how peaked, how spread), which needs no map between the vocabularies; it is zero
when one distribution is a relabelling of the other.

**Aligned positions.** Token positions are paired through aligned spans (``kdkit.align``): a span that is
one token on each side pairs those two predictions. A span of several tokens on one side is merged as
TRL's GOLD merges it: the distribution predicting the span's first token, scaled by the probabilities that
the model gave the span's other (actual) tokens, ``p(. | x) * prod_j p(t_j | ...)`` (unnormalised; the
span's joint probability is right for the actual tokens). Documented in docs/methods.md. The functions
read the span's *base* position from ``*_first``; marking each span's last token there instead gives
GOLD's other rule (``"bayesian"``: the distribution predicting the last token, scaled by the
probabilities of the earlier ones), as ``CrossCollator(merge="last")`` does.

**Hybrid** (as GOLD's): on the sub-vocabulary of tokens whose strings match in both vocabularies, any of
kdkit's divergences between the two distributions restricted to it (renormalised); ULD on the other
entries; weighted ``matched_weight * divergence + unmatched_weight * ULD``, by default the matched
fraction of the teacher's vocabulary and its complement (GOLD's adaptive weights).

**top_k.** Sorting a 262,144-entry vector per position is the cost of exact ULD (about 20 ms per row on a
2-core CPU). With ``top_k`` set, the k largest entries of each side are compared exactly and the rest by
the difference of their masses, ``|R_s - R_t|``: a lower bound of the exact rest, which lies in
``[|R_s - R_t|, R_s + R_t]``, so the error is at most ``2 * min(R_s, R_t)``. ``top_k=None`` is exact.

Shapes: logits (N, V) or (B, T, V); student and teacher vocabularies may differ (Vs, Vt). Pure tensor
math: bad arguments raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from kdkit.losses.chunked import _chunk_logits, _Head, _run_chunks
from kdkit.losses.divergences import (
    DIVERGENCES,
    _check_mask,
    _check_temperature,
    _counted_index,
    _rows,
    token_divergence,
)


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for the exact, fully sorted ULD), got {top_k}")


def sorted_l1(p: Tensor, q: Tensor, top_k: int | None = None) -> Tensor:
    """(c,) L1 distances between the descending-sorted rows of ``p`` (c, Vp) and ``q`` (c, Vq), the shorter
    padded with zeros; with ``top_k``, exact on the k largest of each and ``|rest mass difference|`` beyond."""
    _check_top_k(top_k)
    if p.shape[0] != q.shape[0]:
        raise ValueError(f"sorted_l1 needs as many rows on both sides, got {p.shape[0]} and {q.shape[0]}")
    width = max(p.shape[-1], q.shape[-1])
    # exact: past the narrower side's entries the wider side's meet the zero padding, so only the wider
    # side's largest (narrower width) entries need sorting, the rest count by their mass (a partial sort:
    # about 4x faster than sorting a 262,144-entry row against a 49,152-entry one)
    k = top_k if top_k is not None and top_k < width else min(p.shape[-1], q.shape[-1])
    ps, qs = _largest(p, k), _largest(q, k)
    rest = _mass_beyond(p, ps) - _mass_beyond(q, qs)
    return (ps - qs).abs().sum(-1) + rest.abs()


def _largest(x: Tensor, k: int) -> Tensor:
    """(c, k) the k largest entries of each row of ``x`` in descending order (all of them, sorted, when
    k >= its width), padded with zeros to k."""
    kept = min(k, x.shape[-1])
    values = x.sort(dim=-1, descending=True).values if kept == x.shape[-1] else x.topk(kept, dim=-1).values
    return F.pad(values, (0, k - kept))


def _mass_beyond(x: Tensor, head: Tensor) -> Tensor:
    """(c,) the mass of ``x``'s rows outside ``head`` (``_largest(x, k)``); exactly 0 when it holds every entry."""
    return x.new_zeros(x.shape[0]) if head.shape[-1] >= x.shape[-1] else x.sum(-1) - head.sum(-1)


def uld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> Tensor:
    """ULD: the mean over counted positions of the sorted-L1 distance between the two softmaxes.

    Args:
        student_logits: (N, Vs) or (B, T, Vs); teacher_logits: (N, Vt) or (B, T, Vt), same leading shape.
        mask: (N,) or (B, T) bool, True where a position counts; None counts all.
        temperature: softmax temperature of both; top_k: see the module docstring (None: exact).

    Returns:
        a float32 scalar; 0 (connected to ``student_logits``) when nothing counts.
    """
    _check_temperature(temperature)
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"student and teacher logits cover different positions: {tuple(student_logits.shape[:-1])} vs "
            f"{tuple(teacher_logits.shape[:-1])}; align them first (kdkit.align)"
        )
    if student_logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (N, V) or (B, T, V), got {tuple(student_logits.shape)}")
    _check_mask(mask, student_logits.shape[:-1])
    index = _counted_index(mask)
    s = F.softmax(_rows(student_logits, index).float() / temperature, dim=-1)
    t = F.softmax(_rows(teacher_logits, index).float() / temperature, dim=-1)
    per_position = sorted_l1(s, t, top_k)
    return per_position.sum() / max(per_position.shape[0], 1)


def hybrid_terms(
    p: Tensor,
    q: Tensor,
    matched: tuple[Tensor, Tensor],
    *,
    divergence: str = "forward_kl",
    top_k: int | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """(divergence on the matched sub-vocabulary, ULD on the rest), each (c,), for student probabilities
    ``p`` (c, Vs) and teacher probabilities ``q`` (c, Vt); ``matched`` = (student ids, teacher ids) (M,).

    The matched parts are renormalised to distributions before ``divergence`` (a name of
    ``kdkit.losses.DIVERGENCES``; ``kwargs`` are its own, e.g. ``beta``); the unmatched entries (the matched
    ones set to zero, which sorts them last like padding) go to ``sorted_l1``.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    s_ids, t_ids = matched
    if s_ids.numel() == 0:
        return torch.zeros_like(p[:, 0]), sorted_l1(p, q, top_k)
    tiny = torch.finfo(p.dtype).tiny
    ps, qs = p.index_select(-1, s_ids), q.index_select(-1, t_ids)
    log_ps = (ps / ps.sum(-1, keepdim=True).clamp_min(tiny)).clamp_min(tiny).log()
    log_qs = (qs / qs.sum(-1, keepdim=True).clamp_min(tiny)).clamp_min(tiny).log()
    matched_part = token_divergence(divergence, log_ps, log_qs, temperature=1.0, **kwargs)
    rest = sorted_l1(p.index_fill(-1, s_ids, 0.0), q.index_fill(-1, t_ids, 0.0), top_k)
    return matched_part, rest


def _rowwise(
    fn: Callable[..., Tensor],
    rows: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    extras: list[Tensor],
    chunk: int,
) -> Tensor:
    """``fn(rows_c, weight, bias, *extras_c) -> (c,)`` over row chunks, concatenated; chunks whose inputs need
    gradients are recomputed in backward (their (c, V) logits are not kept)."""
    needs = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (rows, weight, bias))
    parts = []
    for start in range(0, rows.shape[0], chunk):
        args = (rows[start : start + chunk], weight, bias, *(x[start : start + chunk] for x in extras))
        parts.append(
            checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False) if needs else fn(*args)
        )
    return torch.cat(parts) if parts else rows.new_zeros(0)


class _SortedL1(torch.autograd.Function):
    """Per-row ``sorted_l1(p_raw * exp(log_f), q)`` against a teacher given by its sorted head ``q_head``
    (c, W), descending, and the mass beyond it ``q_rest`` (c,), with the gradient worked out in forward.

    Autograd through ``sort``/``topk`` would keep (or, checkpointed, recompute) the sort of both sides: for a
    262,144-token teacher the sorts are most of ULD's time. The gradient of an L1 between sorted vectors is
    the sign of each difference sent back to the entry it came from (entries beyond the head share the
    sign of the rest-mass difference), so the forward stores it as int8 (c, Vs) plus one scalar per row
    for the factor; backward is a multiply. Ties and zero differences get a zero subgradient, as
    ``abs`` has.
    """

    @staticmethod
    def forward(ctx: Any, p_raw: Tensor, log_f: Tensor, q_head: Tensor, q_rest: Tensor) -> Tensor:
        f = log_f.exp()
        p = p_raw * f.unsqueeze(-1)  # (c, Vs)
        width = q_head.shape[-1]
        exact = width >= p.shape[-1]
        top = p.sort(dim=-1, descending=True) if exact else p.topk(width, dim=-1)
        values = F.pad(top.values, (0, width - top.values.shape[-1]))
        diff = values - q_head  # (c, W)
        rest = (0.0 if exact else p.sum(-1) - top.values.sum(-1)) - q_rest  # (c,) all of p in the head: 0
        signs = rest.sign().to(torch.int8).unsqueeze(-1).expand_as(p).clone()  # (c, Vs) entries past the head
        signs.scatter_(-1, top.indices, diff[:, : top.indices.shape[-1]].sign().to(torch.int8))
        ctx.save_for_backward(signs, f, (signs * p_raw).sum(-1) * f)  # d loss / d log_f = sum(sign * p)
        return diff.abs().sum(-1) + rest.abs()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        signs, f, d_log_f = ctx.saved_tensors
        return signs * (grad * f).unsqueeze(-1), d_log_f * grad, None, None


def _teacher_head(q: Tensor, top_k: int | None, width: int, student_vocab: int) -> tuple[Tensor, Tensor]:
    """(sorted head (c, W), mass beyond it (c,)) of teacher rows ``q`` (c, Vt): its ``top_k`` largest; or,
    exact, its ``student_vocab`` largest (past them the teacher's entries meet the student's zero padding:
    counted by mass, as ``sorted_l1``), all of q padded when the student's vocabulary is the larger."""
    head = _largest(q, top_k if top_k is not None and top_k < width else student_vocab)
    return head, _mass_beyond(q, head)


def _uld_chunks(
    student: Any, teacher: Callable[[int, int], tuple[Tensor, Tensor]], log_f: Tensor, temperature: float,
    chunk_size: int,
) -> Tensor:  # fmt: skip
    """Sum over span chunks of ``_SortedL1``: ``teacher(a, b)`` gives the (head, rest) of spans [a, b), no
    grad; the student's softmax is checkpointed (recomputed in backward, its (c, Vs) not kept)."""
    rows = student.rows
    needs = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (rows, student.weight, student.bias)
    )

    def probs(hs: Tensor, ws: Tensor | None, bs: Tensor | None) -> Tensor:
        return F.softmax(_chunk_logits(hs, ws, bs) / temperature, dim=-1)

    total = None
    for a in range(0, max(rows.shape[0], 1), chunk_size):
        b = min(a + chunk_size, rows.shape[0])
        args = (rows[a:b], student.weight, student.bias)
        p = checkpoint(probs, *args, use_reentrant=False, preserve_rng_state=False) if needs else probs(*args)
        with torch.no_grad():
            head, rest = teacher(a, b)
        part = _SortedL1.apply(p, log_f[a:b], head, rest).sum()
        total = part if total is None else total + part
    assert total is not None
    return total


def span_log_factors(
    hidden: Tensor,
    weight: Tensor | None,
    targets: Tensor,
    groups: Tensor,
    first: Tensor,
    num_groups: int,
    *,
    temperature: float = 1.0,
    bias: Tensor | None = None,
    vocab_size: int | None = None,
    chunk_size: int = 256,
) -> Tensor:
    """(G,) the log of each span's merge factor: the sum of the log-probabilities (at ``temperature``) that
    the model gave the span's tokens after its first. 0 for a one-token span.

    ``hidden`` (B, T, D) and ``targets``/``groups``/``first`` (B, T), already shifted (position t predicts
    ``targets[:, t]``); ``groups`` holds each position's span id in [0, G) or -1 (not aligned), ``first``
    marks the position that predicts a span's first token.
    """
    rest = (groups >= 0) & ~first
    index = _counted_index(rest)
    vocab = _rows_of(hidden, weight) if vocab_size is None else vocab_size
    head = _Head(hidden, weight, bias, index, vocab)
    ids = targets.reshape(-1).index_select(0, index) if index is not None else targets.reshape(-1)

    def chunk(hs: Tensor, ws: Tensor, bs: Tensor | None, y: Tensor) -> Tensor:
        logits = _chunk_logits(hs, ws, bs) / temperature  # (c, V)
        return logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)

    lp = _rowwise(chunk, head.rows, head.weight, head.bias, [ids], chunk_size)  # (n,)
    owners = groups.reshape(-1).index_select(0, index) if index is not None else groups.reshape(-1)
    return torch.zeros(num_groups, dtype=lp.dtype, device=lp.device).index_add(0, owners, lp)


def _rows_of(hidden: Tensor, weight: Tensor | None) -> int:
    """The vocabulary of a side given as hidden states + LM head, or as logits (``weight`` None)."""
    return hidden.shape[-1] if weight is None else weight.shape[0]


def _first_rows(hidden: Tensor, groups: Tensor, first: Tensor, num_groups: int) -> Tensor:
    """(G, D): the hidden state that predicts each span's first token, in span order."""
    flat_first = first.reshape(-1)
    positions = flat_first.nonzero().squeeze(-1)
    owners = groups.reshape(-1).index_select(0, positions)
    if owners.numel() != num_groups or bool(
        (owners.sort().values != torch.arange(num_groups, device=owners.device)).any()
    ):
        raise ValueError("every span needs exactly one first position (groups and first disagree)")
    order = torch.empty_like(owners)
    order[owners] = positions
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, order)


def aligned_cross_tokenizer_loss(
    student_hidden: Tensor,
    student_weight: Tensor | None,
    teacher_hidden: Tensor,
    teacher_weight: Tensor | None,
    *,
    student_targets: Tensor,
    teacher_targets: Tensor,
    student_groups: Tensor,
    teacher_groups: Tensor,
    student_first: Tensor,
    teacher_first: Tensor,
    num_groups: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    matched: tuple[Tensor, Tensor] | None = None,
    divergence: str = "forward_kl",
    divergence_kwargs: dict[str, Any] | None = None,
    matched_weight: float | None = None,
    unmatched_weight: float | None = None,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    student_vocab: int | None = None,
    teacher_vocab: int | None = None,
    chunk_size: int = 256,
) -> tuple[Tensor, dict[str, Tensor]]:
    """ULD (or, with ``matched``, the hybrid) over aligned spans, from final hidden states and LM heads, in
    chunks of ``chunk_size`` spans: neither side's (spans, V) probabilities exist for the whole batch.

    Each side's tensors are (B, T_side, ...), already shifted; ``*_groups``/``*_first`` as in
    ``span_log_factors``. Returns (mean over spans, parts) with parts "uld" (and "matched" for the hybrid),
    each the mean of that term over the spans.
    """
    _check_temperature(temperature)
    _check_top_k(top_k)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    s_vocab = _rows_of(student_hidden, student_weight) if student_vocab is None else student_vocab
    t_vocab = _rows_of(teacher_hidden, teacher_weight) if teacher_vocab is None else teacher_vocab
    kw = divergence_kwargs or {}
    if matched is not None:
        w_m = matched[0].numel() / t_vocab if matched_weight is None else matched_weight
        w_u = 1.0 - w_m if unmatched_weight is None else unmatched_weight
    factors = {}
    for side, hidden, weight, bias, targets, groups, first, vocab in (
        (
            "s",
            student_hidden,
            student_weight,
            student_bias,
            student_targets,
            student_groups,
            student_first,
            s_vocab,
        ),
        (
            "t",
            teacher_hidden,
            teacher_weight,
            teacher_bias,
            teacher_targets,
            teacher_groups,
            teacher_first,
            t_vocab,
        ),
    ):
        factors[side] = span_log_factors(
            hidden, weight, targets, groups, first, num_groups,
            temperature=temperature, bias=bias, vocab_size=vocab, chunk_size=chunk_size,
        )  # fmt: skip
    s_rows = _first_rows(student_hidden, student_groups, student_first, num_groups)
    t_rows = _first_rows(teacher_hidden, teacher_groups, teacher_first, num_groups)
    student = _Head(s_rows, student_weight, student_bias, None, s_vocab)
    t_weight = None if teacher_weight is None else teacher_weight[:t_vocab]
    t_bias = None if teacher_bias is None else teacher_bias[:t_vocab]
    if teacher_weight is None:  # logits rows: cut to the compared vocabulary
        t_rows = t_rows[:, :t_vocab]

    def chunk(
        hs: Tensor, ws: Tensor, bs: Tensor | None, ht: Tensor, fs: Tensor, ft: Tensor
    ) -> tuple[Tensor, ...]:
        p = F.softmax(_chunk_logits(hs, ws, bs) / temperature, dim=-1) * fs.exp().unsqueeze(-1)  # (c, Vs)
        q = F.softmax(_chunk_logits(ht, t_weight, t_bias) / temperature, dim=-1) * ft.exp().unsqueeze(-1)
        m, u = hybrid_terms(p, q, matched, divergence=divergence, top_k=top_k, **kw)
        return (w_m * m.sum() + w_u * u.sum(), u.sum(), m.sum())

    n = max(num_groups, 1)
    if matched is None:  # ULD alone: the gradient comes from the sorts made in forward (_SortedL1)
        width = max(s_vocab, t_vocab)
        t_log_f = factors["t"].detach()

        def teacher(a: int, b: int) -> tuple[Tensor, Tensor]:
            q = F.softmax(_chunk_logits(t_rows[a:b].detach(), t_weight, t_bias) / temperature, dim=-1)
            return _teacher_head(q * t_log_f[a:b].exp().unsqueeze(-1), top_k, width, s_vocab)

        total = _uld_chunks(student, teacher, factors["s"], temperature, chunk_size)
        return total / n, {"uld": (total / n).detach()}
    extras = [t_rows.detach(), factors["s"], factors["t"].detach()]
    sums = _run_chunks(chunk, student, extras, chunk_size)
    parts = {"uld": (sums[1] / n).detach()}
    if matched is not None:
        parts["matched"] = (sums[2] / n).detach()
    return sums[0] / n, parts
