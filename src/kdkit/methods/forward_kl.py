"""Token-level forward KL, KL(p || q) per response token (word-level KD; Hinton et al. 2015, applied per
token as in Kim and Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016, Eq. 2 / word-level KD).

p is the teacher's next-token distribution, q the student's; the loss is the mean over response tokens of
``sum_j p_j (log p_j - log q_j)`` (``kdkit.losses.forward_kl``). Mode-covering: the student spreads mass
over everything the teacher considers plausible."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdkit.config import MethodConfig
from kdkit.methods.lm_base import DivergenceLoss, check_common


@dataclass
class ForwardKLConfig(MethodConfig):
    """Token-level forward KL(p || q) (word-level KD)."""

    name: str = "forward_kl"  # method name
    temperature: float = 1.0  # softmax temperature of both models (no T^2 factor)
    ce_weight: float = 0.0  # weight of an added cross-entropy on the ground-truth tokens; 0 disables it
    chunk_size: int = 1024  # tokens per chunk of the memory-lean loss; 0: full logits (more memory)

    def __post_init__(self) -> None:
        check_common(self)


class ForwardKL(DivergenceLoss):
    name = "forward_kl"
    paper = 'Hinton et al. 2015, per token as word-level KD in Kim and Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016'
    Config = ForwardKLConfig
    divergence = "forward_kl"

    def divergence_kwargs(self) -> dict[str, Any]:
        return {}
