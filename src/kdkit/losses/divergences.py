"""Token-level divergences between a teacher and a student language model.

Notation, used in every docstring here: ``p = softmax(teacher_logits / T)`` (the teacher),
``q = softmax(student_logits / T)`` (the student), both over the vocabulary (last dim, size V).

- forward KL ``KL(p || q)``: the usual "supervised" KD objective, mode-covering.
- reverse KL ``KL(q || p)``: mode-seeking (MiniLLM, Gu et al., ICLR 2024).
- generalized JSD (GKD, Agarwal et al., ICLR 2024, arXiv 2306.13649, Eq. (1)).
- skew KL / skew reverse KL (DistiLLM, Ko et al., ICML 2024, arXiv 2402.03898).
- total variation distance ``0.5 * sum_j |p_j - q_j|``.

Two layers, so that a chunked trainer path can reuse the math on slices of rows:

- ``token_divergence(name, s, t, **kw)``: per-token values, (..., V) logits -> (...), no masking;
- ``forward_kl`` / ``reverse_kl`` / ``generalized_jsd`` / ``skew_kl`` / ``tvd``: the mean of those
  values over the counted tokens of a (B, T, V) or (N, V) batch.

Everything is computed in float32 from log-softmax values (inputs are cast with ``.float()``), so it is
finite for finite logits of any size. None of these multiplies by T^2; a caller that wants Hinton's
gradient scaling multiplies the result by ``temperature**2`` itself (as ``kd.soft_kl`` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------- validation and masking helpers


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    """Same shape, (B, T, V) or (N, V)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (B, T, V) or (N, V), got shape {tuple(student_logits.shape)}")


def _check_mask(mask: Tensor | None, lead_shape: torch.Size) -> None:
    if mask is None:
        return
    if mask.shape != lead_shape:
        raise ValueError(
            f"mask must have the logits' leading shape {tuple(lead_shape)}, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool and mask.dtype.is_floating_point:
        raise ValueError(f"mask must be boolean (True = counted), got dtype {mask.dtype}")


def _counted_index(mask: Tensor | None) -> Tensor | None:
    """(N,) int64 indices of the counted rows of the flattened leading dims, or None for all rows."""
    if mask is None:
        return None
    return mask.reshape(-1).ne(0).nonzero().squeeze(1)


def _rows(logits: Tensor, index: Tensor | None) -> Tensor:
    """(B, T, V) or (N, V) -> (n, V): the counted rows only.

    Selecting rows (instead of zeroing per-token values) keeps uncounted positions out of the graph: their
    gradient is exactly 0 whatever their values (huge, inf or NaN), and no work is spent on them.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    return flat if index is None else flat.index_select(0, index)


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _kl_from_logs(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) summed over the last dim, from log-probabilities: (..., V) -> (...)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(weight_a * a + (1 - weight_a) * b) in log space; 0 < weight_a < 1."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


# ---------------------------------------------------------------- per-token divergences: (..., V) -> (...)


def _forward_kl_tokens(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    _check_temperature(temperature)
    return _kl_from_logs(_log_probs(teacher_logits, temperature), _log_probs(student_logits, temperature))


def _reverse_kl_tokens(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    _check_temperature(temperature)
    return _kl_from_logs(_log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature))


def _generalized_jsd_tokens(
    student_logits: Tensor, teacher_logits: Tensor, beta: float = 0.5, temperature: float = 1.0
) -> Tensor:
    _check_temperature(temperature)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    log_p = _log_probs(teacher_logits, temperature)
    log_q = _log_probs(student_logits, temperature)
    # The endpoints are defined, not limits: JSD_beta -> 0 as beta -> 0 or 1 (it behaves like beta * KL).
    if beta == 0.0:
        return _kl_from_logs(log_p, log_q)
    if beta == 1.0:
        return _kl_from_logs(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)  # M = beta * p + (1 - beta) * q
    return beta * _kl_from_logs(log_p, log_m) + (1.0 - beta) * _kl_from_logs(log_q, log_m)


def _skew_kl_tokens(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alpha: float = 0.1,
    reverse: bool = False,
    temperature: float = 1.0,
) -> Tensor:
    _check_temperature(temperature)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    log_p = _log_probs(teacher_logits, temperature)
    log_q = _log_probs(student_logits, temperature)
    # forward: KL(p || a p + (1-a) q); reverse: KL(q || a q + (1-a) p). alpha = 0 gives the plain KL.
    head, tail = (log_q, log_p) if reverse else (log_p, log_q)
    return _kl_from_logs(head, tail if alpha == 0.0 else _log_mixture(head, tail, alpha))


def _tvd_tokens(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    _check_temperature(temperature)
    p = _log_probs(teacher_logits, temperature).exp()
    q = _log_probs(student_logits, temperature).exp()
    return 0.5 * (p - q).abs().sum(-1)


# name -> per-token function (student_logits, teacher_logits, **kwargs) -> (...) divergences: the one place a
# new token-level divergence is added; the chunked and cached (top-k) losses take any name listed here.
DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "forward_kl": _forward_kl_tokens,
    "generalized_jsd": _generalized_jsd_tokens,
    "reverse_kl": _reverse_kl_tokens,
    "skew_kl": _skew_kl_tokens,
    "tvd": _tvd_tokens,
}


def token_divergence(
    name: str, student_logits: Tensor, teacher_logits: Tensor, **kwargs: float | bool
) -> Tensor:
    """Per-token divergence, no masking and no reduction: the building block of the public losses.

    A chunked trainer path calls this on slices of counted rows and sums the results itself.

    Args:
        name: one of ``DIVERGENCES``: "forward_kl", "generalized_jsd", "reverse_kl", "skew_kl", "tvd".
        student_logits: (..., V), any float dtype (computed in float32).
        teacher_logits: (..., V), same shape.
        **kwargs: the named divergence's own keyword arguments, exactly as in its public function
            (``temperature`` for all; ``beta`` for generalized_jsd; ``alpha``, ``reverse`` for skew_kl).
            An argument the divergence does not take raises TypeError (nothing is silently ignored).

    Returns:
        (...) float32 per-token divergences, summed over the vocabulary.
    """
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}"
        )
    return DIVERGENCES[name](student_logits, teacher_logits, **kwargs)


def _masked_mean(
    name: str, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None, **kwargs: float | bool
) -> Tensor:
    _check_logits(student_logits, teacher_logits)
    _check_mask(mask, student_logits.shape[:-1])
    index = _counted_index(mask)
    per_token = token_divergence(name, _rows(student_logits, index), _rows(teacher_logits, index), **kwargs)
    # An empty selection sums to a 0 that is still connected to student_logits (its grad is all zeros).
    return per_token.sum() / max(per_token.shape[0], 1)


# ---------------------------------------------------------------- public losses: mean over counted tokens


def forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """Forward KL ``KL(p || q) = sum_j p_j log(p_j / q_j)``, averaged over counted tokens.

    Args:
        student_logits: (B, T, V) or (N, V), any float dtype (computed in float32).
        teacher_logits: same shape as student_logits (same vocabulary order).
        mask: (B, T) or (N,) boolean, True where the token counts; None counts every token.
            Uncounted positions change neither the loss nor any gradient (their gradient is exactly 0).
        temperature: T > 0, divides both logits (no T^2 factor).

    Returns:
        Scalar float32: mean over counted tokens (0, still connected to the graph, if none count).
    """
    return _masked_mean("forward_kl", student_logits, teacher_logits, mask, temperature=temperature)


def reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """Reverse KL ``KL(q || p) = sum_j q_j log(q_j / p_j)``, averaged over counted tokens.

    Args:
        student_logits: (B, T, V) or (N, V), any float dtype (computed in float32).
        teacher_logits: same shape as student_logits (same vocabulary order).
        mask: (B, T) or (N,) boolean, True where the token counts; None counts every token.
            Uncounted positions change neither the loss nor any gradient (their gradient is exactly 0).
        temperature: T > 0, divides both logits (no T^2 factor).

    Returns:
        Scalar float32: mean over counted tokens (0, still connected to the graph, if none count).
    """
    return _masked_mean("reverse_kl", student_logits, teacher_logits, mask, temperature=temperature)


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024, Eq. (1)), token mean.

    ``M = beta * p + (1 - beta) * q`` and
    ``JSD_beta = beta * KL(p || M) + (1 - beta) * KL(q || M)``  for 0 < beta < 1.

    The endpoints are *defined* (the expression itself tends to 0 there), following TRL's
    ``GKDTrainer.generalized_jsd_loss``: ``beta = 0`` is the forward KL ``KL(p || q)`` (teacher first) and
    ``beta = 1`` is the reverse KL ``KL(q || p)`` (student first). In between, small beta behaves like a
    scaled forward KL and beta near 1 like a scaled reverse KL. ``beta = 0.5`` is the symmetric
    Jensen-Shannon divergence (swapping student and teacher gives the same value).

    Args:
        student_logits: (B, T, V) or (N, V), any float dtype (computed in float32).
        teacher_logits: same shape as student_logits (same vocabulary order).
        mask: (B, T) or (N,) boolean, True where the token counts; None counts every token.
            Uncounted positions change neither the loss nor any gradient (their gradient is exactly 0).
        beta: in [0, 1], weight of the teacher in the mixture; default 0.5 (the paper tunes it).
        temperature: T > 0, divides both logits (no T^2 factor).

    Returns:
        Scalar float32: mean over counted tokens (0, still connected to the graph, if none count).
    """
    return _masked_mean(
        "generalized_jsd", student_logits, teacher_logits, mask, beta=beta, temperature=temperature
    )


def skew_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    alpha: float = 0.1,
    reverse: bool = False,
    temperature: float = 1.0,
) -> Tensor:
    """Skew KL of DistiLLM (Ko et al., ICML 2024, arXiv 2402.03898), averaged over counted tokens.

    - forward (SKL, ``reverse=False``): ``KL(p || alpha * p + (1 - alpha) * q)``;
    - reverse (SRKL, ``reverse=True``): ``KL(q || alpha * q + (1 - alpha) * p)``.

    Skewing the second argument towards the first keeps the divergence (and its gradient) bounded when the
    student puts almost no mass where the teacher does. ``alpha = 0`` gives the plain forward or reverse
    KL. This is the divergence itself (exactly 0 at ``q = p``); a cross-entropy form
    ``H(p, mixture)`` would differ from the forward one by the teacher's entropy.

    Args:
        student_logits: (B, T, V) or (N, V), any float dtype (computed in float32).
        teacher_logits: same shape as student_logits (same vocabulary order).
        mask: (B, T) or (N,) boolean, True where the token counts; None counts every token.
            Uncounted positions change neither the loss nor any gradient (their gradient is exactly 0).
        alpha: skew in [0, 1); default 0.1 (the paper's choice).
        reverse: use the skew reverse KL.
        temperature: T > 0, divides both logits (no T^2 factor).

    Returns:
        Scalar float32: mean over counted tokens (0, still connected to the graph, if none count).
    """
    return _masked_mean(
        "skew_kl",
        student_logits,
        teacher_logits,
        mask,
        alpha=alpha,
        reverse=reverse,
        temperature=temperature,
    )


def tvd(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """Total variation distance ``0.5 * sum_j |p_j - q_j|`` (in [0, 1]), averaged over counted tokens.

    Used as a KD objective by, e.g., Wen et al. (ACL 2023, f-divergence minimization for sequence-level KD).

    Args:
        student_logits: (B, T, V) or (N, V), any float dtype (computed in float32).
        teacher_logits: same shape as student_logits (same vocabulary order).
        mask: (B, T) or (N,) boolean, True where the token counts; None counts every token.
            Uncounted positions change neither the loss nor any gradient (their gradient is exactly 0).
        temperature: T > 0, divides both logits.

    Returns:
        Scalar float32 in [0, 1]: mean over counted tokens (0, still connected to the graph, if none count).
    """
    return _masked_mean("tvd", student_logits, teacher_logits, mask, temperature=temperature)
