"""Token-level reverse KL, KL(q || p) per response token (MiniLLM, Gu et al., ICLR 2024, Eq. 1 at the token
level; Agarwal et al., ICLR 2024, "On-Policy Distillation", reverse KL as the beta = 1 end of Eq. 4).

Mode-seeking: the student concentrates on the teacher's main modes (``kdkit.losses.reverse_kl``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdkit.config import MethodConfig
from kdkit.methods.lm_base import DivergenceLoss, check_common


@dataclass
class ReverseKLConfig(MethodConfig):
    """Token-level reverse KL(q || p)."""

    name: str = "reverse_kl"  # method name
    temperature: float = 1.0  # softmax temperature of both models (no T^2 factor)
    ce_weight: float = 0.0  # weight of an added cross-entropy on the ground-truth tokens; 0 disables it
    chunk_size: int = 1024  # tokens per chunk of the memory-lean loss; 0: full logits (more memory)

    def __post_init__(self) -> None:
        check_common(self)


class ReverseKL(DivergenceLoss):
    name = "reverse_kl"
    paper = 'Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024 (token-level reverse KL)'
    Config = ReverseKLConfig
    divergence = "reverse_kl"

    def divergence_kwargs(self) -> dict[str, Any]:
        return {}
