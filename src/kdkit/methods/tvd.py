"""Total variation distance per token, ``0.5 * sum_j |p_j - q_j|`` (used for LM distillation by Wen et al.,
"f-Divergence Minimization for Sequence-Level Knowledge Distillation", ACL 2023, Table 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdkit.config import MethodConfig
from kdkit.methods.lm_base import DivergenceLoss, check_common


@dataclass
class TVDConfig(MethodConfig):
    """Token-level total variation distance."""

    name: str = "tvd"  # method name
    temperature: float = 1.0  # softmax temperature of both models (no T^2 factor)
    ce_weight: float = 0.0  # weight of an added cross-entropy on the ground-truth tokens; 0 disables it
    chunk_size: int = 1024  # tokens per chunk of the memory-lean loss; 0: full logits (more memory)

    def __post_init__(self) -> None:
        check_common(self)


class TVD(DivergenceLoss):
    name = "tvd"
    paper = 'Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge Distillation", ACL 2023'
    Config = TVDConfig
    divergence = "tvd"

    def divergence_kwargs(self) -> dict[str, Any]:
        return {}
