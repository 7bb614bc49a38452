"""ATKD: adaptive teaching (Zhong et al., "Revisiting Knowledge Distillation for Autoregressive Language
Models", ACL 2024, arXiv 2402.11890, Section 3).

Per response token with target g, the KL splits into a target-oriented and a diversity-oriented part
(Eq. 3-5): ``KL(p || q) = TKD + UnC * DKD`` with ``TKD = KL([p_g, 1 - p_g] || [q_g, 1 - q_g])``,
``DKD = KL(p^ || q^)`` on the renormalised non-target distributions and ``UnC = 1 - p_g`` the teacher's
uncertainty, which suppresses DKD for confident teachers. ATKD drops that weight and teaches tokens
differently (Eq. 7): the top ``hard_ratio`` of tokens by UnC are hard, the rest easy, and

    L = easy_weight * mean_easy(DKD) + (1 - easy_weight) * mean_hard(TKD + DKD).

``base: reverse`` uses the reverse-KL analogues (the paper applies ATKD on top of several base KD losses);
the split is still by the teacher's UnC. Defaults from the paper: hard_ratio = 0.5 (top 50%),
easy_weight (lambda) = 0.2. Ties at the threshold and the split scope: see ``kdkit.losses.atkd_loss``
(we follow the paper's top-k% with an exact count, not the official code's ``UnC >= median``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kdkit.config import MethodConfig
from kdkit.errors import KdkitError
from kdkit.methods.lm_base import ATKDLoss, check_common


@dataclass
class ATKDConfig(MethodConfig):
    """ATKD (Zhong et al., ACL 2024) on forward or reverse KL."""

    name: str = "atkd"  # method name
    base: Literal["forward", "reverse"] = "forward"  # the KL that is decoupled: KL(p||q) or KL(q||p)
    hard_ratio: float = 0.5  # fraction of response tokens (largest teacher UnC) taught as hard
    easy_weight: float = 0.2  # lambda: weight of the easy tokens' DKD; 1 - lambda goes to hard TKD + DKD
    scope: Literal["batch", "sequence"] = "batch"  # split over all tokens of a batch, or per sequence
    temperature: float = 1.0  # softmax temperature of both models (no T^2 factor)
    ce_weight: float = 0.0  # weight of an added cross-entropy on the ground-truth tokens; 0 disables it
    chunk_size: int = 1024  # tokens per chunk of the memory-lean loss; 0: full logits (more memory)

    def __post_init__(self) -> None:
        check_common(self)
        for key in ("hard_ratio", "easy_weight"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise KdkitError(f"config key 'method.{key}' must be in [0, 1], got {value}")


class ATKD(ATKDLoss):
    name = "atkd"
    paper = 'Zhong et al., "Revisiting Knowledge Distillation for Autoregressive Language Models", ACL 2024 (arXiv 2402.11890)'
    Config = ATKDConfig
