"""ULD: Universal Logit Distillation (Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal
Logit Distillation Loss for LLMs", 2024, arXiv 2402.12030, Eq. 5-6), for a teacher with any tokenizer.

At each aligned position, the L1 distance between the student's and the teacher's probability vectors
sorted in descending order (the shorter padded with zeros); the loss is ``CE + lambda * ULD`` (Eq. 6),
here ``ce_weight * CE + ULD``. Positions are paired through aligned spans (``kdkit.align``); a span of
several tokens is merged as TRL's GOLD merges it (``kdkit.losses.uld``): by default the distribution
predicting its first token times the probabilities of its later tokens (GOLD's ``"observed"`` rule, with
the predicting positions); ``merge: last`` takes the distribution predicting its last token times the
probabilities of its earlier ones (GOLD's ``"bayesian"`` rule).

``hybrid: true`` is GOLD's hybrid: ``divergence`` (GOLD: generalized JSD, beta 0.5) on the sub-vocabulary
of tokens whose strings match in both vocabularies and ULD on the rest, weighted by ``matched_weight`` and
``unmatched_weight`` (null: the matched fraction of the teacher's vocabulary and its complement).

With the teacher's tokenizer the spans are the response tokens one to one: ULD works for any pair.
From a teacher cache (``kdkit cache``) the teacher is known by its top-k at each of its positions: ULD
compares the k largest entries exactly and the rest by mass, as ``top_k: k`` does live (a smaller ``top_k``
compares fewer); the hybrid's shared part is coarse-grained to (the shared top-k, one tail class)
(``kdkit.losses.uld_cached``).

Defaults: temperature 1 and exact sorting (the paper's); ``ce_weight`` 1 (Eq. 6 keeps the CE term);
``skip_eos`` false (GOLD's default true drops the EOS span from the ULD term; the CE still trains EOS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from kdkit.config import MethodConfig
from kdkit.errors import KdkitError
from kdkit.methods.lm_base import LMLoss, LMOutputs, check_common

HybridDivergence = Literal["forward_kl", "reverse_kl", "generalized_jsd", "tvd"]


@dataclass
class ULDConfig(MethodConfig):
    """ULD (Boizard et al., 2024), or GOLD's hybrid of a divergence on shared tokens and ULD on the rest."""

    name: str = "uld"  # method name
    temperature: float = 1.0  # softmax temperature of both models
    ce_weight: float = 1.0  # weight of the cross-entropy on the ground-truth tokens (Eq. 6: 1)
    chunk_size: int = 1024  # tokens per chunk at a 32k vocabulary (scaled down for larger ones); 0: all
    top_k: int | None = None  # null: exact sort; k: the k largest exact, the rest by mass (faster)
    hybrid: bool = False  # true: divergence on the shared sub-vocabulary, ULD on the rest (GOLD)
    divergence: HybridDivergence = "generalized_jsd"  # hybrid: on the shared tokens (GOLD's)
    beta: float = 0.5  # generalized_jsd's interpolation weight (GOLD's default)
    matched_weight: float | None = None  # hybrid: weight of the shared-vocabulary divergence; null: adaptive
    unmatched_weight: float | None = None  # hybrid: weight of ULD on the rest; null: 1 - matched_weight
    skip_eos: bool = False  # true: the EOS span is left out of the ULD term (GOLD's default)
    merge: Literal["first", "last"] = "first"  # a span's distribution: that predicting its first/last token

    def __post_init__(self) -> None:
        check_common(self)
        if self.top_k is not None and self.top_k < 1:
            raise KdkitError(f"config key 'method.top_k' must be >= 1 or null (exact), got {self.top_k}")
        if not 0.0 <= self.beta <= 1.0:
            raise KdkitError(f"config key 'method.beta' must be in [0, 1], got {self.beta}")
        for key in ("matched_weight", "unmatched_weight"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise KdkitError(f"config key 'method.{key}' must be >= 0 or null (adaptive), got {value}")


class ULD(LMLoss):
    name = "uld"
    paper = 'Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs", 2024 (arXiv 2402.12030)'
    Config = ULDConfig
    cross_tokenizer = True
    spans_only = True  # with one tokenizer too: every response token is a span of its own
    cacheable = True  # the cache keeps the teacher's top-k at its own positions (kdkit.losses.uld_cached)

    def token_loss(
        self, s: LMOutputs, t: LMOutputs, targets: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """A batch without aligned spans (one tokenizer, a direct call): every counted position is a span of
        its own. (A run always builds spans, so ``skip_eos`` is applied there, by the collator.)"""
        flat = mask.reshape(-1)
        groups = (flat.long().cumsum(0) - 1).masked_fill(~flat, -1).reshape(mask.shape)
        pad = targets.new_zeros(targets.shape[0], 1)
        batch = {
            "student": {"input_ids": torch.cat([pad, targets], 1)},
            "teacher": {"input_ids": torch.cat([pad, targets], 1)},
            "align": {
                key: torch.cat([torch.full_like(pad, fill), value.to(pad.dtype)], 1).to(value.dtype)
                for key, fill, value in (
                    ("student_groups", -1, groups),
                    ("teacher_groups", -1, groups),
                    ("student_first", 0, mask),
                    ("teacher_first", 0, mask),
                )
            }
            | {"num_groups": int(flat.sum())},
        }
        return self.cross_token_loss(s, t, batch)[0], None

    def cross_settings(self) -> dict[str, Any]:
        c = self.config
        settings: dict[str, Any] = {"divergence": None, "top_k": c.top_k}
        if c.hybrid:
            kwargs = {"beta": c.beta} if c.divergence == "generalized_jsd" else {}
            settings.update(
                divergence=c.divergence,
                divergence_kwargs=kwargs,
                matched_weight=c.matched_weight,
                unmatched_weight=c.unmatched_weight,
            )
        return settings
