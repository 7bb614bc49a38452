"""Token losses against a cached top-k teacher: the divergences and ATKD when only the teacher's k most
likely tokens per position were kept (``kdkit cache``), computed in chunks like ``kdkit.losses.chunked``.

What the cache keeps per counted token (``TopKTeacher``): the ids of the teacher's top-k tokens and their
log-probabilities ``log p_i = z_i / T - logsumexp(z / T)`` (the logits minus the log-normaliser, so the
dropped tail mass is known: ``1 - sum_i p_i``), plus the exact log-probability of the target token.

How the tail is treated (``tail``): the teacher's distribution is rebuilt over the full vocabulary, exact
on the top-k tokens and on the target, with the remaining mass ``m = 1 - sum(known)`` spread over the
other tokens

- ``"student"`` (default): in proportion to the student's own (detached) probabilities, ``p_j = m q_j /
  q(tail)``. Then ``p_j / q_j`` is the same on every tail token, so for any f-divergence (forward and
  reverse KL, JSD, skew KL, TVD) the tail contributes exactly as one merged "tail" class with mass ``m``
  vs ``q(tail)``: the loss equals the divergence between the two distributions coarse-grained to
  (top-k tokens, tail), a lower bound of the full divergence (data processing inequality) that is exact
  when the tail is empty (k = V). Values and gradients equal those of the merged-class computation. The
  tail pulls only on the student's total tail mass, never on its shape.
- ``"uniform"``: evenly, ``p_j = m / |tail|`` (the student is also pulled towards a flat tail).

With k = V both give the dense loss (a test checks every divergence and ATKD). ATKD's split uses the
teacher's exact ``UnC = 1 - p_g`` from the stored target log-probability.

How it is computed: with ``tail="student"`` and a non-empty tail, the losses never build the (c, V) teacher.
They coarse-grain both sides to k + 1 classes (the top-k tokens and the tail; for ATKD also the target)
and apply the same divergence to those: the student side needs one ``logsumexp`` over the vocabulary and
one over its tail tokens. This gives the values and gradients of the rebuilt-teacher computation
(``dense_teacher``, kept as the reference; a test compares the two) at a fraction of the (c, V) work.
``tail="uniform"``, and a tail emptied by k = V, use the rebuilt teacher.

Everything runs chunk by chunk (``chunk_size`` counted tokens at a time), so peak memory is at most that of
the chunked live-teacher loss; the student side is the same hidden states + LM head (or full logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.losses.atkd import _binary_kl, _check_atkd_options, _decoupled_tokens, _hard_split
from kdkit.losses.chunked import _as_user_error, _ce_sum, _chunk_logits, _counted_targets, _Head, _run_chunks
from kdkit.losses.divergences import DIVERGENCES, _counted_index, token_divergence

TAILS = ("student", "uniform")
TAIL_FLOOR = _FLOOR = (
    1e-30  # smallest tail mass used in log space (fp16 rounding can make the known mass exceed 1)
)
# The tail mass 1 - sum(p) is summed in float64: for a confident row (top-k mass 1 - 1e-7) float32 keeps only
# a digit of it, and a broad student's reverse KL weighs its log by the student's whole tail mass.


def _tail_log_mass(lp: Tensor) -> Tensor:
    """(c, 1) log(1 - sum_i exp(lp_i)) of (c, k) log-probabilities, summed in float64, floored at _FLOOR."""
    return (1.0 - lp.double().exp().sum(-1, keepdim=True)).clamp(min=_FLOOR).log().to(lp.dtype)


@dataclass
class TopKTeacher:
    """The cached teacher of the counted tokens of a batch (row-major order of the (B, T) mask)."""

    indices: Tensor  # (n, k) int token ids of the teacher's top-k, any order
    logprobs: Tensor  # (n, k) their log-probabilities at the cache's temperature (any float dtype)
    target_logprobs: Tensor | None = None  # (n,) log-probability of each token's target (ATKD needs it)
    tail: str = "student"  # how the losses spread the dropped mass: "student" or "uniform" (see above)
    matched_mass: Tensor | None = None  # (n,) cross-tokenizer: the teacher's mass on the shared tokens

    def __len__(self) -> int:
        return self.indices.shape[0]


def dense_teacher(
    indices: Tensor,
    logprobs: Tensor,
    vocab: int,
    tail: str,
    student_logprobs: Tensor | None = None,
    targets: Tensor | None = None,
    target_logprobs: Tensor | None = None,
) -> Tensor:
    """(c, V) float32 teacher log-probabilities rebuilt from its top-k (see the module docstring).

    Args:
        indices: (c, k) token ids in [0, vocab); logprobs: (c, k) their log-probabilities.
        vocab: V, the compared vocabulary.
        tail: "student" (needs ``student_logprobs``, (c, V), used detached) or "uniform".
        targets, target_logprobs: (c,) each, or None: the target's exact log-probability is placed too.
    """
    lp = logprobs.float()
    idx = indices.long()
    known = lp.double().exp().sum(-1)  # (c,) float64: 1 - known of a confident row is tiny (see _FLOOR)
    free = torch.ones(idx.shape[0], vocab, dtype=torch.bool, device=idx.device)
    free.scatter_(-1, idx, False)
    if targets is not None and target_logprobs is not None:
        g = targets.long().unsqueeze(-1)
        outside = free.gather(-1, g).squeeze(-1)  # target not among the top-k
        known = known + torch.where(outside, target_logprobs.double().exp(), torch.zeros_like(known))
        free.scatter_(-1, g, False)
    log_mass = (1.0 - known).clamp(min=_FLOOR).log().float().unsqueeze(-1)  # (c, 1)
    if tail == "student":
        if student_logprobs is None:
            raise ValueError("tail='student' needs the student's log-probabilities")
        lq = student_logprobs.detach().float()
        lq_tail = lq.masked_fill(~free, float("-inf")).logsumexp(-1, keepdim=True)  # (c, 1)
        out = log_mass + lq - lq_tail  # finite wherever the tail is not empty
    elif tail == "uniform":
        count = free.sum(-1, keepdim=True).clamp(min=1)
        out = (log_mass - count.float().log()).expand(-1, vocab).clone()
    else:
        raise ValueError(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")
    out = out.masked_fill(~free, 0.0)  # rows with an empty tail: no inf/NaN left before the scatter
    out.scatter_(-1, idx, lp)
    if targets is not None and target_logprobs is not None:
        g = targets.long().unsqueeze(-1)
        out.scatter_(
            -1, g, torch.where(outside, target_logprobs.float(), out.gather(-1, g).squeeze(-1))[:, None]
        )
    return out


@dataclass
class _LogitRows:
    """The student given as full logits: ``_run_chunks`` slices ``rows``; there is no head to apply."""

    rows: Tensor  # (n, V)
    weight: None = None
    bias: None = None


def _student_rows(
    hidden_or_logits: Tensor, weight: Tensor | None, bias: Tensor | None, mask: Tensor | None, vocab: int
) -> tuple[_Head | _LogitRows, Tensor | None]:
    index = _counted_index(mask)
    if weight is None:
        flat = hidden_or_logits[..., :vocab].reshape(-1, vocab)
        return _LogitRows(flat if index is None else flat.index_select(0, index)), index
    return _Head(hidden_or_logits, weight, bias, index, vocab), index


def _logits(hs: Tensor, ws: Tensor | None, bs: Tensor | None) -> Tensor:
    return hs.float() if ws is None else _chunk_logits(hs, ws, bs)


def _student_classes(z: Tensor, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The student coarse-grained: log q of the top-k ids (c, k), of the tail (c, 1), and logsumexp(z) (c, 1).

    ``z`` is (c, V) logits / T; the tail is every token that is not among ``idx`` (nor ``targets``, (c,)).
    """
    lse = z.logsumexp(-1, keepdim=True)  # (c, 1)
    rest = z.scatter(-1, idx, float("-inf"))  # (c, V): the tail tokens only
    if targets is not None:
        rest.scatter_(-1, targets.unsqueeze(-1), float("-inf"))
    return z.gather(-1, idx) - lse, rest.logsumexp(-1, keepdim=True) - lse, lse


def _merged_decoupled(
    z: Tensor, idx: Tensor, lp_top: Tensor, lp_target: Tensor, g: Tensor, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token (TKD, DKD) (n,) each, and logsumexp(z) (c, 1), over the classes (top-k, target, tail).

    ``z``: (c, V) student logits / T; ``idx``/``lp_top``: (c, k) the teacher's top-k; ``lp_target``: (c,)
    its exact target log-probability, used when the target ``g`` (c,) is not among the top-k (as
    ``dense_teacher`` does). The teacher's classes are renormalised together, as the dense rebuild is.
    """
    k = idx.shape[1]
    is_g = idx == g.unsqueeze(-1)  # (c, k)
    inside = is_g.any(-1)  # (c,) the target is one of the top-k
    lq_top, lq_tail, lse = _student_classes(z, idx, g)
    lq_g = z.gather(-1, g.unsqueeze(-1)).squeeze(-1) - lse.squeeze(-1)  # (c,)
    # teacher columns (c, k + 2): top-k, the target when it is outside them, the tail mass
    lp_out = lp_target.masked_fill(inside, float("-inf"))
    known = lp_top.double().exp().sum(-1) + lp_out.double().exp()
    lp_mass = (1.0 - known).clamp(min=_FLOOR).log().to(lp_top.dtype)
    t_all = torch.cat([lp_top, lp_out.unsqueeze(-1), lp_mass.unsqueeze(-1)], -1).log_softmax(-1)
    at_g = t_all[:, :k].gather(-1, is_g.float().argmax(-1, keepdim=True)).squeeze(-1)
    lp_g = torch.where(inside, at_g, t_all[:, k])
    # the non-target classes, aligned on both sides (c, k + 1): the top-k except the target, and the tail
    keep = torch.cat([~is_g, torch.ones_like(inside).unsqueeze(-1)], -1)
    t_cols = torch.cat([t_all[:, :k], t_all[:, k + 1 :]], -1)
    s_cols = torch.cat([lq_top, lq_tail], -1)
    lp_o = t_cols.masked_fill(~keep, float("-inf")).logsumexp(-1)  # log(1 - p_g)
    lq_o = s_cols.masked_fill(~keep, float("-inf")).logsumexp(-1)  # log(1 - q_g)
    zero = torch.zeros((), device=z.device)
    lp_hat = torch.where(keep, t_cols - lp_o.unsqueeze(-1), zero)  # 0 on both sides at the target column
    lq_hat = torch.where(keep, s_cols - lq_o.unsqueeze(-1), zero)
    if reverse:
        return _binary_kl(lq_g, lq_o, lp_g, lp_o), (lq_hat.exp() * (lq_hat - lp_hat)).sum(-1), lse
    return _binary_kl(lp_g, lp_o, lq_g, lq_o), (lp_hat.exp() * (lp_hat - lq_hat)).sum(-1), lse


def _cross_entropy_sum(
    s_logits: Tensor, z: Tensor, lse: Tensor | None, targets: Tensor, temperature: float
) -> Tensor:
    """Summed CE of the (c, V) student logits at T = 1; reuses logsumexp(z) when z is the logits (T = 1)."""
    if lse is None or temperature != 1.0:
        return F.cross_entropy(s_logits, targets, reduction="sum")
    return _ce_sum(z, lse, targets)


def _check(teacher: TopKTeacher, n: int, vocab: int, tail: str, chunk_size: int, where: str) -> None:
    if tail not in TAILS:
        raise ValueError(f"{where}: tail must be one of {', '.join(TAILS)}, got {tail!r}")
    if chunk_size < 1:
        raise ValueError(f"{where}: chunk_size must be >= 1, got {chunk_size}")
    idx, lp = teacher.indices, teacher.logprobs
    if idx.dim() != 2 or lp.shape != idx.shape or idx.shape[0] != n:
        raise ValueError(
            f"{where}: the cached teacher has {tuple(idx.shape)} ids and {tuple(lp.shape)} log-probs for {n} "
            "counted tokens; the cache does not match this batch (rebuild it with `kdkit cache`)"
        )
    if idx.numel() and int(idx.max()) >= vocab:
        raise ValueError(
            f"{where}: cached token ids reach {int(idx.max())}, beyond the vocabulary of {vocab}"
        )


def topk_token_loss(
    student_hidden: Tensor,
    student_weight: Tensor | None,
    teacher: TopKTeacher,
    mask: Tensor | None,
    *,
    divergence: str,
    vocab_size: int,
    temperature: float = 1.0,
    tail: str = "student",
    chunk_size: int = 1024,
    targets: Tensor | None = None,
    student_bias: Tensor | None = None,
    **divergence_kwargs: float | bool,
) -> tuple[Tensor, Tensor | None]:
    """A token-level divergence (and the student's CE) against a cached top-k teacher.

    Args:
        student_hidden: (B, T, D) or (N, D) final hidden states with ``student_weight`` (V_s, D); or, with
            ``student_weight=None``, the student's logits (B, T, V_s) / (N, V_s).
        teacher: the counted tokens' top-k teacher, in the row-major order of ``mask``; its log-probs are
            at ``temperature`` (the cache records the temperature it was built with).
        mask: (B, T) or (N,) bool, True where the token counts; None counts all.
        divergence, temperature, chunk_size, targets, student_bias, **divergence_kwargs: as in
            ``chunked_token_loss``; ``vocab_size`` (required) is the compared vocabulary.
        tail: "student" or "uniform", see the module docstring.

    Returns:
        (divergence, ce) float32 scalars, means over the counted tokens (ce None without ``targets``).
    """
    where = "topk_token_loss"
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"{where}: unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}"
        )
    with _as_user_error(where):
        dummy = torch.zeros(1, 2)
        token_divergence(divergence, dummy, dummy, temperature=temperature, **divergence_kwargs)
    student, index = _student_rows(student_hidden, student_weight, student_bias, mask, vocab_size)
    n = student.rows.shape[0]
    _check(teacher, n, vocab_size, tail, chunk_size, where)
    ids = None
    if targets is not None:
        ids = _counted_targets(targets, student_hidden.shape[:-1], index, vocab_size, where)
    extras = [teacher.indices, teacher.logprobs] + ([] if ids is None else [ids])

    merged = tail == "student" and teacher.indices.shape[1] < vocab_size  # a non-empty tail

    def chunk(hs: Tensor, ws: Tensor | None, bs: Tensor | None, t_idx: Tensor, t_lp: Tensor, *y: Tensor):
        s_logits = _logits(hs, ws, bs)  # (c, V)
        z = s_logits / temperature if temperature != 1.0 else s_logits
        if merged:
            lq_top, lq_tail, lse = _student_classes(z, t_idx.long())
            lp = t_lp.float()
            lp_tail = _tail_log_mass(lp)  # (c, 1)
            # (c, k + 1) log-probabilities; times T, since the divergences divide by T before log-softmax
            s_in = temperature * torch.cat([lq_top, lq_tail], -1)
            t_in = temperature * torch.cat([lp, lp_tail], -1)
        else:
            lse = None
            with torch.no_grad():
                lq = F.log_softmax(z, dim=-1) if tail == "student" else None
                t_in = temperature * dense_teacher(t_idx, t_lp, vocab_size, tail, lq)  # (c, V): T * log p
            s_in = s_logits
        div = token_divergence(divergence, s_in, t_in, temperature=temperature, **divergence_kwargs)
        if not y:
            return (div.sum(),)
        return div.sum(), _cross_entropy_sum(s_logits, z, lse, y[0], temperature)

    sums = _run_chunks(chunk, student, extras, chunk_size)
    count = max(n, 1)
    return sums[0] / count, (sums[1] / count if ids is not None else None)


def topk_atkd_loss(
    student_hidden: Tensor,
    student_weight: Tensor | None,
    teacher: TopKTeacher,
    targets: Tensor,
    mask: Tensor | None,
    *,
    vocab_size: int,
    hard_ratio: float = 0.5,
    easy_weight: float = 0.2,
    reverse: bool = False,
    temperature: float = 1.0,
    scope: str = "batch",
    tail: str = "student",
    chunk_size: int = 1024,
    student_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """ATKD (Zhong et al., ACL 2024) against a cached top-k teacher, and the student's CE.

    As ``chunked_atkd_loss`` (same split, tie rule and scope), with the teacher rebuilt from its top-k and
    its exact target log-probability (required: ``teacher.target_logprobs``), which also gives the split's
    ``UnC = 1 - p_g`` without a pass over the vocabulary.
    """
    where = "topk_atkd_loss"
    if teacher.target_logprobs is None:
        raise ValueError(f"{where}: ATKD needs the teacher's target log-probabilities; rebuild the cache")
    with _as_user_error(where):
        _check_atkd_options(vocab_size, hard_ratio, easy_weight, temperature, scope, student_hidden.dim())
    student, index = _student_rows(student_hidden, student_weight, student_bias, mask, vocab_size)
    n = student.rows.shape[0]
    _check(teacher, n, vocab_size, tail, chunk_size, where)
    lead = student_hidden.shape[:-1]
    ids = _counted_targets(targets, lead, index, vocab_size, where)  # (n,)
    t_target = teacher.target_logprobs.float()
    unc = -torch.expm1(t_target)  # (n,) 1 - p_g
    hard, n_hard = _hard_split(unc, lead, index, scope, hard_ratio)

    merged = tail == "student" and teacher.indices.shape[1] + 1 < vocab_size  # top-k + target leave a tail

    def chunk(hs: Tensor, ws: Tensor | None, bs: Tensor | None, t_idx: Tensor, t_lp: Tensor, t_g: Tensor,
              g: Tensor, is_hard: Tensor):  # fmt: skip
        s_logits = _logits(hs, ws, bs)
        z = s_logits / temperature if temperature != 1.0 else s_logits
        lse = None
        if merged:
            tkd, dkd, lse = _merged_decoupled(z, t_idx.long(), t_lp.float(), t_g.float(), g, reverse)
        else:
            with torch.no_grad():
                lq = F.log_softmax(z, dim=-1) if tail == "student" else None
                t_logits = temperature * dense_teacher(t_idx, t_lp, vocab_size, tail, lq, g, t_g)
            tkd, dkd, _ = _decoupled_tokens(s_logits, t_logits, g, temperature, reverse)
        easy_sum = dkd.masked_fill(is_hard, 0.0).sum()
        hard_sum = (tkd + dkd).masked_fill(~is_hard, 0.0).sum()
        return easy_sum, hard_sum, _cross_entropy_sum(s_logits, z, lse, g, temperature)

    easy_sum, hard_sum, ce_sum = _run_chunks(
        chunk, student, [teacher.indices, teacher.logprobs, t_target, ids, hard], chunk_size
    )
    loss = easy_weight * (easy_sum / max(n - n_hard, 1)) + (1.0 - easy_weight) * (hard_sum / max(n_hard, 1))
    return loss, ce_sum / max(n, 1)


def topk_of_logits(logits: Tensor, k: int, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(ids, log-probs), each (..., k): the top-k of ``softmax(logits / T)`` (what the cache stores)."""
    lp = F.log_softmax(logits.float() / temperature, dim=-1)
    values, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return ids, values


__all__ = ["TAILS", "TopKTeacher", "dense_teacher", "topk_atkd_loss", "topk_of_logits", "topk_token_loss"]
