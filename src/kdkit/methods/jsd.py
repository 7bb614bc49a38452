"""Generalized Jensen-Shannon divergence (Agarwal et al., "On-Policy Distillation of Language Models",
ICLR 2024, Eq. 4; the GKD loss): with M = beta * p + (1 - beta) * q,
``JSD_beta = beta * KL(p || M) + (1 - beta) * KL(q || M)``; beta = 0 and beta = 1 are defined as forward
and reverse KL (as in TRL's ``GKDTrainer``). Default beta = 0.5 (the paper's and TRL's default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdkit.config import MethodConfig
from kdkit.errors import KdkitError
from kdkit.methods.lm_base import DivergenceLoss, check_common


@dataclass
class JSDConfig(MethodConfig):
    """Generalized JSD_beta (GKD loss, Agarwal et al. 2024)."""

    name: str = "jsd"  # method name
    beta: float = 0.5  # interpolation weight; 0 = forward KL, 1 = reverse KL
    temperature: float = 1.0  # softmax temperature of both models (no T^2 factor)
    ce_weight: float = 0.0  # weight of an added cross-entropy on the ground-truth tokens; 0 disables it
    chunk_size: int = 1024  # tokens per chunk of the memory-lean loss; 0: full logits (more memory)

    def __post_init__(self) -> None:
        check_common(self)
        if not 0.0 <= self.beta <= 1.0:
            raise KdkitError(f"config key 'method.beta' must be in [0, 1], got {self.beta}")


class JSD(DivergenceLoss):
    name = "jsd"
    paper = 'Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes", ICLR 2024 (GKD)'
    Config = JSDConfig
    divergence = "generalized_jsd"

    def divergence_kwargs(self) -> dict[str, Any]:
        return {"beta": self.config.beta}
