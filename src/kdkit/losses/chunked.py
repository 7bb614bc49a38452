"""Memory-lean token losses: the divergences and ATKD computed chunk by chunk from hidden states.

The full-vocabulary logits of both models for a whole batch are never held at once. With V = 49,152 and
4,096 tokens, one model's fp32 logits take 800 MB, and a divergence keeps several such tensors (log-softmax,
probabilities, their gradients). Here only the counted tokens are gathered, and each chunk of ``chunk_size``
of them computes ``logits = hidden @ W.T (+ b)`` in float32 and its part of the loss inside
``torch.utils.checkpoint`` (non-reentrant), which keeps only the chunk's inputs (views of the gathered hidden
states) and recomputes the chunk's logits in backward. Peak memory is that of one chunk's logits and their
intermediates, not the batch's (the approach of Liger-Kernel's fused linear losses and torchtune's chunked
KD loss, here with recomputation rather than gradients computed in the forward pass).

Cost: each student and teacher LM-head matmul runs once more in backward (ATKD: the teacher's twice more,
as the hard/easy split needs the teacher's uncertainty of every counted token before any loss term), except
in the last chunk: it runs without checkpointing, since autograd runs its backward first (the newest nodes
first) and frees what it saved before any other chunk is recomputed, so the peak stays that of one chunk.
A batch whose counted tokens fit in one chunk therefore recomputes nothing.

The values equal those of the public functions (``forward_kl`` etc., ``atkd_loss``) on the full logits
``hidden @ W[:vocab_size].T``, up to float summation order; so do the gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from kdkit.losses.atkd import _check_atkd_options, _decoupled_tokens, _hard_split, _target_split
from kdkit.losses.divergences import DIVERGENCES, _counted_index, token_divergence

# ---------------------------------------------------------------- validation


@contextmanager
def _as_user_error(where: str) -> Iterator[None]:
    """Prefix the inner losses' ValueError/TypeError (bad hyper-parameters) with the entry point's name."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None


def _check_head(name: str, hidden: Tensor, weight: Tensor, bias: Tensor | None, where: str) -> None:
    if hidden.dim() not in (2, 3):
        raise ValueError(f"{where}: {name}_hidden must be (B, T, D) or (N, D), got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{where}: {name}_weight must be (V, D) with D = {hidden.shape[-1]} (the hidden size), "
            f"got {tuple(weight.shape)}; pass the LM head's weight, not its transpose"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"{where}: {name}_bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")


def _check_inputs(
    s_hidden: Tensor,
    s_weight: Tensor,
    s_bias: Tensor | None,
    t_hidden: Tensor,
    t_weight: Tensor,
    t_bias: Tensor | None,
    mask: Tensor | None,
    vocab_size: int | None,
    chunk_size: int,
    where: str,
) -> int:
    """Shapes and sizes of the chunked losses' inputs; returns the compared vocabulary size."""
    _check_head("student", s_hidden, s_weight, s_bias, where)
    _check_head("teacher", t_hidden, t_weight, t_bias, where)
    lead = s_hidden.shape[:-1]
    if t_hidden.shape[:-1] != lead:
        raise ValueError(
            f"{where}: student and teacher hidden states cover different tokens: "
            f"{tuple(lead)} vs {tuple(t_hidden.shape[:-1])}; feed both models the same batch"
        )
    return _check_sizes(lead, mask, min(s_weight.shape[0], t_weight.shape[0]), vocab_size, chunk_size, where)


def _check_sizes(
    lead: torch.Size, mask: Tensor | None, rows: int, vocab_size: int | None, chunk_size: int, where: str
) -> int:
    """The mask, vocabulary size (at most ``rows``, the smaller head's) and chunk size; returns the vocab."""
    if mask is not None and (mask.shape != lead or mask.dtype != torch.bool):
        raise ValueError(
            f"{where}: mask must be bool with the hidden states' leading shape {tuple(lead)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    vocab = rows if vocab_size is None else vocab_size
    if not 1 <= vocab <= rows:
        raise ValueError(
            f"{where}: vocab_size must be in [1, {rows}] (the smaller LM head's rows), got {vocab_size}"
        )
    if chunk_size < 1:
        raise ValueError(f"{where}: chunk_size must be >= 1, got {chunk_size}")
    return vocab


def _counted_targets(
    targets: Tensor, lead: torch.Size, index: Tensor | None, vocab: int, where: str
) -> Tensor:
    """(n,) ids of the counted rows, checked to be valid token ids."""
    if targets.shape != lead or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(
            f"{where}: targets must be integer token ids shaped {tuple(lead)}, "
            f"got {targets.dtype} {tuple(targets.shape)}"
        )
    flat = targets.reshape(-1)
    ids = flat if index is None else flat.index_select(0, index)
    if ids.numel() and bool(((ids < 0) | (ids >= vocab)).any()):
        raise ValueError(f"{where}: counted targets must be token ids in [0, {vocab}); mask out the others")
    return ids


# ---------------------------------------------------------------- chunk machinery


def _chunk_logits(hidden: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """(c, D) @ (V, D).T (+ (V,)) -> (c, V) float32 logits; with ``weight`` None the rows are logits already.

    Autocast is off so that a caller's bf16 autocast region cannot lower the matmul; inputs are cast here,
    per chunk, so a bf16 head gets no fp32 copy that lives (and is saved) across chunks.
    """
    if weight is None:
        return hidden.float()
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())


class _Head:
    """One model's gathered hidden states (n, D) and LM head cut to the compared vocabulary."""

    def __init__(
        self, hidden: Tensor, weight: Tensor | None, bias: Tensor | None, index: Tensor | None, vocab: int
    ):
        flat = hidden.reshape(-1, hidden.shape[-1])  # (B*T, D)
        self.rows = flat if index is None else flat.index_select(0, index)  # (n, D): counted tokens only
        if weight is None:  # the rows are logits (a model without a plain LM head)
            self.rows = self.rows[:, :vocab]
        self.weight = None if weight is None else weight[:vocab]  # (V, D): rows beyond vocab never read
        self.bias = None if bias is None else bias[:vocab]


def _run_chunks(
    fn: Callable[..., tuple[Tensor, ...]],
    student: _Head,
    extras: list[Tensor],
    chunk_size: int,
) -> list[Tensor]:
    """Sum ``fn(s_rows, s_weight, s_bias, *extra_rows)`` over row chunks.

    ``fn`` returns a tuple of scalars; ``extras`` are (n, ...) per-token tensors sliced like the rows (the
    teacher's hidden states, targets, ...); what is the same for every chunk (the teacher's LM head) is
    closed over by ``fn``. With no counted row, one empty chunk still runs so the sums are 0s connected to
    the student's graph.
    """
    n = student.rows.shape[0]
    recompute = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (student.rows, student.weight, student.bias)
    )
    totals: list[Tensor] | None = None
    for start in range(0, max(n, 1), chunk_size):
        part = slice(start, start + chunk_size)
        args = (student.rows[part], student.weight, student.bias, *(x[part] for x in extras))
        # Non-reentrant checkpoint keeps only these inputs (views of already-held tensors) and recomputes
        # fn's (c, V) intermediates in backward; no RNG is involved, so its state is not saved. The last
        # chunk keeps its intermediates: its backward runs first (module docstring).
        last = start + chunk_size >= n
        sums = (
            checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
            if recompute and not last
            else fn(*args)
        )
        totals = list(sums) if totals is None else [a + b for a, b in zip(totals, sums, strict=True)]
    assert totals is not None
    return totals


# ---------------------------------------------------------------- cross-entropy (SFT, ce_weight)


def _ce_sum(logits: Tensor, lse: Tensor, targets: Tensor) -> Tensor:
    """Summed CE from (c, V) logits, their (c, 1) logsumexp and (c,) target ids; no log-softmax written."""
    return (lse.squeeze(-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)).sum()


def chunked_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    mask: Tensor | None,
    *,
    vocab_size: int | None = None,
    chunk_size: int = 1024,
    bias: Tensor | None = None,
) -> Tensor:
    """Mean cross-entropy of the counted tokens from final hidden states and an LM head, in chunks.

    Equals ``F.cross_entropy(hidden[mask] @ weight[:V].T (+ bias[:V]), targets[mask])`` (values and
    gradients) without holding the batch's logits: each chunk computes ``logsumexp(logits) -
    logits[target]`` (no log-softmax is written) and is recomputed in backward like the divergences.

    Args:
        hidden: (B, T, D) or (N, D); weight: (V', D) with V' >= vocab_size; bias: (V',) or None.
        targets: (B, T) or (N,) integer ids (already shifted); counted ones in [0, vocab_size).
        mask: (B, T) or (N,) bool, True where the token counts; None counts all.
        vocab_size: the first ``vocab_size`` rows of the head (default all); chunk_size: tokens per chunk.

    Returns:
        a float32 scalar; 0 (still connected to ``hidden`` and ``weight``) when no token counts.
    """
    where = "chunked_cross_entropy"
    _check_head("student", hidden, weight, bias, where)
    vocab = _check_sizes(hidden.shape[:-1], mask, weight.shape[0], vocab_size, chunk_size, where)
    index = _counted_index(mask)
    ids = _counted_targets(targets, hidden.shape[:-1], index, vocab, where)
    head = _Head(hidden, weight, bias, index, vocab)

    def chunk(hs: Tensor, ws: Tensor, bs: Tensor | None, y: Tensor) -> tuple[Tensor]:
        logits = _chunk_logits(hs, ws, bs)  # (c, V)
        return (_ce_sum(logits, logits.logsumexp(-1, keepdim=True), y),)

    (total,) = _run_chunks(chunk, head, [ids], chunk_size)
    return total / max(head.rows.shape[0], 1)


# ---------------------------------------------------------------- token divergences


def chunked_token_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    mask: Tensor | None,
    *,
    divergence: str,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    chunk_size: int = 1024,
    targets: Tensor | None = None,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    **divergence_kwargs: float | bool,
) -> tuple[Tensor, Tensor | None]:
    """A token-level divergence (and the student's CE) from hidden states, in chunks of counted tokens.

    Equals ``token_divergence``'s public function on the full logits, e.g.
    ``forward_kl(hs @ Ws[:V].T, ht @ Wt[:V].T, mask, temperature)``, without ever holding them: see the
    module docstring. Only counted tokens are computed; uncounted ones get exactly zero gradient.

    Args:
        student_hidden: (B, T, D_s) or (N, D_s) final hidden states (after the final norm), any float dtype.
        student_weight: (V_s, D_s) LM head weight.
        teacher_hidden: (B, T, D_t) or (N, D_t), same leading shape; treated as constant (detached).
        teacher_weight: (V_t, D_t), treated as constant.
        mask: (B, T) or (N,) bool, True where the token counts; None counts all.
        divergence: a name of ``DIVERGENCES``.
        temperature: T > 0, divides both models' logits (no T^2 factor).
        vocab_size: compare the first ``vocab_size`` rows of both heads (padded heads may differ in size);
            default the smaller head's row count.
        chunk_size: counted tokens per chunk; peak memory grows with ``chunk_size * vocab_size``.
        targets: (B, T) or (N,) integer ids (shifted by the caller) for the student's cross-entropy, or None.
            Counted ones must be in [0, vocab_size).
        student_bias, teacher_bias: (V_s,) / (V_t,) LM head biases, or None.
        **divergence_kwargs: the divergence's own options (``beta``; ``alpha``, ``reverse``).

    Returns:
        (divergence, ce): float32 scalars, means over the counted tokens; ``ce`` is the student's
        cross-entropy at temperature 1 on the first ``vocab_size`` logits, None when ``targets`` is None.
        With no counted token both are 0, still connected to student_hidden and student_weight.

    Raises:
        ValueError: bad shapes, sizes, names or options (one line: what, where, how to fix).
    """
    where = "chunked_token_loss"
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"{where}: unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}"
        )
    with _as_user_error(where):  # options are checked once, up front, on a dummy token
        dummy = torch.zeros(1, 2)
        token_divergence(divergence, dummy, dummy, temperature=temperature, **divergence_kwargs)
    vocab = _check_inputs(
        student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias,
        mask, vocab_size, chunk_size, where,
    )  # fmt: skip
    index = _counted_index(mask)
    ids = (
        None if targets is None else _counted_targets(targets, student_hidden.shape[:-1], index, vocab, where)
    )
    student = _Head(student_hidden, student_weight, student_bias, index, vocab)
    teacher = _Head(teacher_hidden.detach(), teacher_weight.detach(), _detach(teacher_bias), index, vocab)

    def chunk(hs: Tensor, ws: Tensor, bs: Tensor | None, ht: Tensor, *y: Tensor) -> tuple[Tensor, ...]:
        s_logits = _chunk_logits(hs, ws, bs)  # (c, V)
        with torch.no_grad():
            t_logits = _chunk_logits(ht, teacher.weight, teacher.bias)  # (c, V)
        div = token_divergence(divergence, s_logits, t_logits, temperature=temperature, **divergence_kwargs)
        if not y:
            return (div.sum(),)
        return div.sum(), F.cross_entropy(s_logits, y[0], reduction="sum")  # sum: 0 (not NaN) when empty

    sums = _run_chunks(chunk, student, [teacher.rows] + ([] if ids is None else [ids]), chunk_size)
    count = max(student.rows.shape[0], 1)
    return sums[0] / count, (sums[1] / count if ids is not None else None)


def _detach(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.detach()


# ---------------------------------------------------------------- ATKD


def chunked_atkd_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    targets: Tensor,
    mask: Tensor | None,
    *,
    hard_ratio: float = 0.5,
    easy_weight: float = 0.2,
    reverse: bool = False,
    temperature: float = 1.0,
    scope: str = "batch",
    vocab_size: int | None = None,
    chunk_size: int = 1024,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """ATKD (Zhong et al., ACL 2024, arXiv 2402.11890) and the student's CE, in chunks of counted tokens.

    Equals ``atkd_loss(hs @ Ws[:V].T, ht @ Wt[:V].T, targets, mask, ...)`` (same split, tie rule and scope)
    without holding the full logits. Two passes: the teacher's ``UnC = 1 - p_g`` of every counted token,
    chunk by chunk under no_grad (the split ranks all of them); then the split (``atkd.py``'s own helper);
    then the chunked, checkpointed TKD/DKD pass summing the easy and hard terms separately.

    Args:
        student_hidden, student_weight, teacher_hidden, teacher_weight, mask, vocab_size, chunk_size,
        student_bias, teacher_bias: as in ``chunked_token_loss``.
        targets: (B, T) or (N,) integer ids (shifted by the caller); counted ones in [0, vocab_size).
        hard_ratio, easy_weight, reverse, temperature, scope: as in ``atkd_loss`` (scope "sequence" needs
            (B, T, D) hidden states).

    Returns:
        (loss, ce): float32 scalars; ``ce`` is the student's mean cross-entropy at temperature 1 over the
        counted tokens, from the same chunk logits. Both 0 (connected to the student) if none count.

    Raises:
        ValueError: bad shapes, sizes or options.
    """
    where = "chunked_atkd_loss"
    vocab = _check_inputs(
        student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias,
        mask, vocab_size, chunk_size, where,
    )  # fmt: skip
    with _as_user_error(where):
        _check_atkd_options(vocab, hard_ratio, easy_weight, temperature, scope, student_hidden.dim())
    lead = student_hidden.shape[:-1]  # (B, T) or (N,)
    index = _counted_index(mask)
    ids = _counted_targets(targets, lead, index, vocab, where)  # (n,)
    student = _Head(student_hidden, student_weight, student_bias, index, vocab)
    teacher = _Head(teacher_hidden.detach(), teacher_weight.detach(), _detach(teacher_bias), index, vocab)

    unc = _teacher_uncertainty(teacher, ids, temperature, chunk_size)  # (n,)
    hard, n_hard = _hard_split(unc, lead, index, scope, hard_ratio)  # (n,) bool

    def chunk(
        hs: Tensor, ws: Tensor, bs: Tensor | None, ht: Tensor, g: Tensor, is_hard: Tensor
    ) -> tuple[Tensor, ...]:
        s_logits = _chunk_logits(hs, ws, bs)  # (c, V)
        with torch.no_grad():
            t_logits = _chunk_logits(ht, teacher.weight, teacher.bias)  # (c, V)
        tkd, dkd, _ = _decoupled_tokens(s_logits, t_logits, g, temperature, reverse)  # each (c,)
        # masked_fill as in atkd_loss: keeps each sum connected to the graph when its group is empty here.
        easy_sum = dkd.masked_fill(is_hard, 0.0).sum()
        hard_sum = (tkd + dkd).masked_fill(~is_hard, 0.0).sum()
        return easy_sum, hard_sum, F.cross_entropy(s_logits, g, reduction="sum")

    easy_sum, hard_sum, ce_sum = _run_chunks(chunk, student, [teacher.rows, ids, hard], chunk_size)
    n = ids.shape[0]
    loss = easy_weight * (easy_sum / max(n - n_hard, 1)) + (1.0 - easy_weight) * (hard_sum / max(n_hard, 1))
    return loss, ce_sum / max(n, 1)


def _teacher_uncertainty(teacher: _Head, ids: Tensor, temperature: float, chunk_size: int) -> Tensor:
    """(n,) teacher ``UnC = 1 - p_g`` of every counted token, one chunk of logits at a time, no graph."""
    parts = []
    with torch.no_grad():
        for start in range(0, ids.shape[0], chunk_size):
            part = slice(start, start + chunk_size)
            logits = _chunk_logits(teacher.rows[part], teacher.weight, teacher.bias)  # (c, V)
            parts.append(_target_split(logits, ids[part], temperature)[1].exp())
    return torch.cat(parts) if parts else ids.new_zeros(0, dtype=torch.float32)
