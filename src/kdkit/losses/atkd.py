"""Adaptive Teaching KD (ATKD): Zhong et al., "Revisiting Knowledge Distillation for Autoregressive
Language Models", ACL 2024, arXiv 2402.11890.

Per token with target id g, teacher ``p = softmax(t/T)`` and student ``q = softmax(s/T)``, the forward KL
splits into a target-oriented and a diversity-oriented part (as in DKD, Zhao et al., CVPR 2022):

    KL(p || q) = TKD + (1 - p_g) * DKD
    TKD = KL([p_g, 1 - p_g] || [q_g, 1 - q_g])        (binary: target vs. everything else)
    DKD = KL(p^ || q^),  p^_j = p_j / (1 - p_g), j != g  (the non-target distribution, renormalised)

``UnC = 1 - p_g`` (the teacher's uncertainty) scales DKD, so on "easy" tokens (confident teacher) the
student barely learns the teacher's non-target knowledge. ATKD removes the factor and treats tokens by
difficulty: the hard tokens (largest UnC) learn ``TKD + DKD``, the easy ones ``DKD`` only:

    L = easy_weight * mean_easy(DKD) + (1 - easy_weight) * mean_hard(TKD + DKD)

The reverse variant uses ``TKD_rev = KL([q_g, 1 - q_g] || [p_g, 1 - p_g])`` and ``DKD_rev = KL(q^ || p^)``
(so ``KL(q || p) = TKD_rev + (1 - q_g) * DKD_rev``), with tokens still split by the teacher's UnC.

Everything is computed in float32 log space: ``log(1 - p_g)`` is ``logsumexp`` of the non-target
logits minus ``logsumexp`` of all logits, never ``log(1 - exp(.))``, so one-hot teachers (p_g = 1) and
logits of +-1e4 give finite values and gradients.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kdkit.losses.divergences import _check_logits, _check_mask, _check_temperature, _counted_index, _rows

_SCOPES = ("batch", "sequence")


def _binary_kl(log_a: Tensor, log_1ma: Tensor, log_b: Tensor, log_1mb: Tensor) -> Tensor:
    """KL([a, 1 - a] || [b, 1 - b]) from the four log-probabilities; all (n,)."""
    return log_a.exp() * (log_a - log_b) + log_1ma.exp() * (log_1ma - log_1mb)


def _target_split(logits: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """(n, V) logits, (n,) ids -> log prob of the target (n,), log(1 - prob of target) (n,),
    log of the renormalised non-target distribution (n, V) with 0 at the target column."""
    z = logits.float() / temperature  # (n, V)
    col = targets.unsqueeze(-1)  # (n, 1)
    lse = z.logsumexp(-1)  # (n,)
    lse_other = z.scatter(-1, col, float("-inf")).logsumexp(-1)  # (n,) over j != g
    log_target = z.gather(-1, col).squeeze(-1) - lse
    log_other = lse_other - lse  # log(1 - p_g), stable even when p_g rounds to 1
    # 0 (finite) at the target column: both sides get the same 0, so it adds nothing to DKD, and the
    # scatter blocks its gradient.
    log_hat = (z - lse_other.unsqueeze(-1)).scatter(-1, col, 0.0)  # (n, V)
    return log_target, log_other, log_hat


def _decoupled_tokens(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token (TKD, DKD, UnC) for (n, V) logits and (n,) valid target ids; each (n,)."""
    lq_g, lq_o, lq_hat = _target_split(student_logits, targets, temperature)
    lp_g, lp_o, lp_hat = _target_split(teacher_logits, targets, temperature)
    if reverse:
        tkd = _binary_kl(lq_g, lq_o, lp_g, lp_o)
        dkd = (lq_hat.exp() * (lq_hat - lp_hat)).sum(-1)
    else:
        tkd = _binary_kl(lp_g, lp_o, lq_g, lq_o)
        dkd = (lp_hat.exp() * (lp_hat - lq_hat)).sum(-1)
    return tkd, dkd, lp_o.exp()


def _check_targets(targets: Tensor, lead_shape: torch.Size) -> None:
    if targets.shape != lead_shape:
        raise ValueError(
            f"targets must have the logits' leading shape {tuple(lead_shape)}, got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer token ids, got dtype {targets.dtype}")


def _check_target_range(targets: Tensor, vocab: int) -> None:
    if targets.numel() and bool(((targets < 0) | (targets >= vocab)).any()):
        raise ValueError(f"counted targets must be token ids in [0, {vocab})")


def decoupled_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token parts of the decoupled KL (no mask, no reduction).

    Forward (``reverse=False``): ``KL(p || q) = tkd + unc * dkd`` with ``unc = 1 - p_g``.
    Reverse (``reverse=True``): ``KL(q || p) = tkd + (1 - q_g) * dkd``; note that the returned ``unc`` is
    still the teacher's ``1 - p_g`` (what ATKD splits on), not the ``1 - q_g`` of this identity.

    Args:
        student_logits: (B, T, V) or (N, V), any float dtype (computed in float32).
        teacher_logits: same shape.
        targets: (B, T) or (N,) integer ids in [0, V): the token each logit row predicts (already shifted
            by the caller for causal LMs). Every position must hold a valid id here.
        temperature: T > 0, divides both logits.
        reverse: student-first divergences (TKD_rev, DKD_rev).

    Returns:
        (tkd, dkd, unc), each float32 and shaped like targets.
    """
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    _check_targets(targets, student_logits.shape[:-1])
    if student_logits.shape[-1] < 2:
        raise ValueError("decoupled KL needs a vocabulary of at least 2")
    _check_target_range(targets, student_logits.shape[-1])
    parts = _decoupled_tokens(
        _rows(student_logits, None), _rows(teacher_logits, None), targets.reshape(-1), temperature, reverse
    )
    return tuple(x.reshape(targets.shape) for x in parts)  # type: ignore[return-value]


def _num_hard(count: int, hard_ratio: float) -> int:
    """round(hard_ratio * count) with halves rounded up (1e-9 absorbs float error such as 0.3 * 5)."""
    return min(count, math.floor(hard_ratio * count + 0.5 + 1e-9))


def _hard_tokens(unc: Tensor, groups: Tensor, num_groups: int, hard_ratio: float) -> tuple[Tensor, int]:
    """(n,) bool hard flags: in each group, the round(hard_ratio * size) tokens with the largest UnC.

    Ties are broken by position: a stable sort on -UnC keeps the earlier (flattened) token first, so it
    is the one counted as hard.
    """
    n = unc.shape[0]
    order = torch.sort(-unc.detach(), stable=True).indices  # largest UnC first, ties by position
    order = order[torch.sort(groups[order], stable=True).indices]  # grouped, still by UnC within
    counts = torch.bincount(groups, minlength=num_groups)  # (G,)
    k = torch.tensor([_num_hard(c, hard_ratio) for c in counts.tolist()], device=unc.device)  # (G,)
    starts = counts.cumsum(0) - counts
    group_sorted = groups[order]
    rank = torch.arange(n, device=unc.device) - starts[group_sorted]  # rank within its group
    hard = torch.zeros(n, dtype=torch.bool, device=unc.device)
    hard[order] = rank < k[group_sorted]
    return hard, int(k.sum())


def _check_atkd_options(
    vocab: int, hard_ratio: float, easy_weight: float, temperature: float, scope: str, ndim: int
) -> None:
    """ATKD's hyper-parameters; ``ndim`` is that of the logits (3 for (B, T, V))."""
    _check_temperature(temperature)
    if vocab < 2:
        raise ValueError("ATKD needs a vocabulary of at least 2")
    if not 0.0 <= hard_ratio <= 1.0:
        raise ValueError(f"hard_ratio must be in [0, 1], got {hard_ratio}")
    if not 0.0 <= easy_weight <= 1.0:
        raise ValueError(f"easy_weight must be in [0, 1], got {easy_weight}")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {', '.join(_SCOPES)}, got {scope!r}")
    if scope == "sequence" and ndim != 3:
        raise ValueError("scope='sequence' needs (B, T, V) logits")


def _hard_split(
    unc: Tensor, lead: torch.Size, index: Tensor | None, scope: str, hard_ratio: float
) -> tuple[Tensor, int]:
    """ATKD's hard/easy split of the counted tokens: (n,) bool hard flags and their count.

    ``unc`` (n,) is the teacher's UnC of the counted rows, ``lead`` the (B, T) or (N,) leading shape and
    ``index`` the counted rows of its flattening (None: all), as from ``_counted_index``.
    """
    n = unc.shape[0]
    if scope == "sequence":
        batch, length = lead
        seq = torch.arange(batch, device=unc.device).repeat_interleave(length)  # (B*T,) sequence of each row
        groups, num_groups = (seq if index is None else seq.index_select(0, index)), batch
    else:
        groups, num_groups = torch.zeros(n, dtype=torch.long, device=unc.device), 1
    return _hard_tokens(unc, groups, num_groups, hard_ratio)


def atkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    mask: Tensor | None = None,
    hard_ratio: float = 0.5,
    easy_weight: float = 0.2,
    reverse: bool = False,
    temperature: float = 1.0,
    scope: str = "batch",
) -> Tensor:
    """ATKD loss (Zhong et al., ACL 2024): ``easy_weight * mean_easy(DKD) + (1 - easy_weight) *
    mean_hard(TKD + DKD)`` over the counted tokens; see the module docstring for TKD and DKD.

    Split: the counted tokens are ranked by the teacher's ``UnC = 1 - p_g`` (largest first, a stable sort,
    so equal UnC keeps the earlier flattened position first); exactly ``k = round(hard_ratio * n)``
    (halves rounded up) of the ``n`` counted tokens of a split scope are hard, the rest easy. Each group is
    averaged over its own size; an empty group contributes 0. ``scope="batch"`` splits all counted tokens
    of the batch together; ``scope="sequence"`` splits each sequence of a (B, T, V) batch on its own
    (with its own k), and the groups are then pooled over the batch exactly as for "batch".

    Paper vs. official code (github.com/WHU-ZQH/ATKD, ``DistillTrainer.atkd``):
    the paper takes the top 50% of tokens by UnC as hard; the code thresholds at ``torch.median`` of the
    micro-batch's counted UnC with ``UnC >= median`` hard, so every tie at the median is hard and with
    many saturated (UnC = 0) teacher tokens the easy group can be empty. We follow the paper's top-k
    reading with an exact count (``hard_ratio`` generalises the 50%) and a deterministic tie rule. Like
    the code, the default scope is the (micro-)batch and each group is averaged over its own count; the
    code's TKD takes ``log`` of probabilities, ours stays in log space. The code shifts logits and ids
    itself; here ``targets`` must already be aligned with the logits, and one temperature divides both
    models' logits (no T^2 factor).

    Args:
        student_logits: (B, T, V) or (N, V), any float dtype (computed in float32).
        teacher_logits: same shape.
        targets: (B, T) or (N,) integer ids: the token each logit row predicts (shifted by the caller).
            Uncounted positions may hold anything (e.g. -100); counted ones must be in [0, V).
        mask: (B, T) or (N,) boolean, True where the token counts; None counts every token.
            Uncounted positions change neither the loss, the split, nor any gradient.
        hard_ratio: fraction of counted tokens that are hard, in [0, 1]; 0.5 in the paper.
        easy_weight: weight of the easy-token term, in [0, 1]; 0.2 in the paper's setting.
        reverse: reverse-KL variant (TKD_rev, DKD_rev), split still by the teacher's UnC.
        temperature: T > 0, divides both logits.
        scope: "batch" or "sequence" (the latter needs (B, T, V) logits).

    Returns:
        Scalar float32; 0 (still connected to student_logits) when no token counts.
    """
    _check_logits(student_logits, teacher_logits)
    lead = student_logits.shape[:-1]
    _check_mask(mask, lead)
    _check_targets(targets, lead)
    vocab = student_logits.shape[-1]
    _check_atkd_options(vocab, hard_ratio, easy_weight, temperature, scope, student_logits.dim())

    index = _counted_index(mask)
    flat_targets = targets.reshape(-1)
    ids = flat_targets if index is None else flat_targets.index_select(0, index)  # (n,)
    _check_target_range(ids, vocab)
    tkd, dkd, unc = _decoupled_tokens(
        _rows(student_logits, index), _rows(teacher_logits, index), ids, temperature, reverse
    )  # each (n,)

    n = ids.shape[0]
    hard, n_hard = _hard_split(unc, lead, index, scope, hard_ratio)

    # masked_fill (not indexing) keeps the sums connected to the graph even when a group is empty.
    easy_term = dkd.masked_fill(hard, 0.0).sum() / max(n - n_hard, 1)
    hard_term = (tkd + dkd).masked_fill(~hard, 0.0).sum() / max(n_hard, 1)
    return easy_weight * easy_term + (1.0 - easy_weight) * hard_term
