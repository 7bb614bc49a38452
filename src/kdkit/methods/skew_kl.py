"""Skew KL (Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models", ICML 2024,
Eq. 3-4): forward ``KL(p || alpha * p + (1 - alpha) * q)`` or, with ``reverse: true``, the skew reverse KL
``KL(q || alpha * q + (1 - alpha) * p)``. Default alpha = 0.1 (the paper's default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdkit.config import MethodConfig
from kdkit.errors import KdkitError
from kdkit.methods.lm_base import DivergenceLoss, check_common


@dataclass
class SkewKLConfig(MethodConfig):
    """Skew KL / skew reverse KL (DistiLLM, Ko et al. 2024)."""

    name: str = "skew_kl"  # method name
    alpha: float = 0.1  # skew: weight of the distribution itself in the mixture
    reverse: bool = False  # true: skew reverse KL(q || alpha q + (1 - alpha) p)
    temperature: float = 1.0  # softmax temperature of both models (no T^2 factor)
    ce_weight: float = 0.0  # weight of an added cross-entropy on the ground-truth tokens; 0 disables it
    chunk_size: int = 1024  # tokens per chunk of the memory-lean loss; 0: full logits (more memory)

    def __post_init__(self) -> None:
        check_common(self)
        if not 0.0 <= self.alpha < 1.0:
            raise KdkitError(f"config key 'method.alpha' must be in [0, 1), got {self.alpha}")


class SkewKL(DivergenceLoss):
    name = "skew_kl"
    paper = 'Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models", ICML 2024'
    Config = SkewKLConfig
    divergence = "skew_kl"

    def divergence_kwargs(self) -> dict[str, Any]:
        return {"alpha": self.config.alpha, "reverse": self.config.reverse}
