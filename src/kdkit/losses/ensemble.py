"""Several teachers as one: the weighted mixture of their distributions, as logits.

``mixture_logits`` returns ``z_mix = T log sum_t w_t softmax(z_t / T)``, the logits whose softmax at
temperature T is the weighted mixture ``sum_t w_t p_t`` of the teachers' distributions at T (the weights
sum to 1). A loss that applies T to its teacher's logits then sees exactly the mixture, so every divergence
and ATKD (whose target / non-target split is then the mixture's) runs on it unchanged. This is the rule of
ensemble distillation (Hinton, Vinyals and Dean 2015, section 2: the arithmetic mean of the ensemble's
predictive distributions is the soft target).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def normalised(weights: list[float]) -> list[float]:
    """The weights scaled to sum to 1 (each must be > 0)."""
    if not weights or min(weights) <= 0:
        raise ValueError(f"teacher weights must be > 0, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def mixture_logits(logits: list[Tensor], weights: list[float], temperature: float = 1.0) -> Tensor:
    """``T log sum_t w_t softmax(z_t / T)`` in float32.

    Args:
        logits: one (..., V) tensor per teacher, the same shape.
        weights: one weight > 0 per teacher (normalised here).
        temperature: T > 0, the temperature the loss applies to its teacher's logits.
    """
    if len(logits) != len(weights) or not logits:
        raise ValueError(f"{len(logits)} teachers' logits for {len(weights)} weights")
    if any(z.shape != logits[0].shape for z in logits):
        raise ValueError(f"the teachers' logits differ in shape: {[tuple(z.shape) for z in logits]}")
    w = normalised(weights)
    stacked = torch.stack(
        [
            F.log_softmax(z.float() / temperature, dim=-1) + math.log(wt)
            for z, wt in zip(logits, w, strict=True)
        ]
    )  # (n_teachers, ..., V)
    return temperature * torch.logsumexp(stacked, dim=0)
