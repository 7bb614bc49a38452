"""What the causal-LM methods share: model outputs as final hidden states + LM head, the token shift, and
one loss module parametrised by a divergence.

Memory: in training the token loss is computed in chunks from the final hidden states and the two LM heads
(``kdkit.losses.chunked``), so the full-vocabulary fp32 logits of both models for the whole batch are never
held at once. Models whose logits are not ``hidden @ W.T (+ b)`` (e.g. Gemma-2's final logit soft-capping,
Cohere's ``logit_scale``) fall back to full logits and the plain functions of ``kdkit.losses``, as does
``chunk_size: 0``.

Alignment: labels are aligned with ``input_ids`` (Hugging Face convention); the output at position t
predicts token t + 1, so hidden states and logits are shifted left by one and the mask is
``labels[:, 1:] != -100`` (response tokens, EOS included; prompt and padding excluded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.errors import KdkitError
from kdkit.losses.chunked import chunked_atkd_loss, chunked_cross_entropy, chunked_token_loss
from kdkit.losses.topk import TopKTeacher, topk_atkd_loss, topk_token_loss
from kdkit.methods.base import LossContext, LossOutput

IGNORE = -100


@dataclass
class LMOutputs:
    """One model's outputs for the token loss: hidden states + LM head, or full logits."""

    hidden: Tensor | None  # (B, T, D) final hidden states (after the final norm)
    weight: Tensor | None  # (V, D) LM head
    bias: Tensor | None  # (V,) or None
    logits: Tensor | None = None  # (B, T, V) when the model cannot be chunked
    topk: TopKTeacher | None = None  # teacher read from a cache (`kdkit cache`): top-k of counted tokens


def chunkable(model: nn.Module) -> bool:
    """True when the model's logits are exactly ``lm_head(final hidden state)``."""
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1.0):
        return False
    head = model.get_output_embeddings()
    return isinstance(head, nn.Linear)


def lm_forward(model: nn.Module, inputs: dict[str, Tensor], chunked: bool) -> LMOutputs:
    """Final hidden states and LM head (chunked path) or full logits (fallback) of a causal LM."""
    if chunked and chunkable(model):
        hidden = model.base_model(**inputs).last_hidden_state
        head = model.get_output_embeddings()
        return LMOutputs(hidden, head.weight, head.bias)
    return LMOutputs(None, None, None, model(**inputs).logits)


def shift(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """(targets, mask), each (B, T - 1): the token each position predicts and whether it counts."""
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    return labels.masked_fill(~mask, 0), mask


def check_causal_lm(name: str, task: str) -> None:
    if task != "causal_lm":
        raise KdkitError(
            f"method '{name}' is a token-level method for task: causal_lm, not {task}; "
            "use method 'kd' for classifiers"
        )


def check_common(config: Any) -> None:
    """Ranges of the fields every causal-LM method has."""
    if config.temperature <= 0:
        raise KdkitError(f"config key 'method.temperature' must be > 0, got {config.temperature}")
    if config.ce_weight < 0:
        raise KdkitError(f"config key 'method.ce_weight' must be >= 0, got {config.ce_weight}")
    if config.chunk_size < 0:
        raise KdkitError(
            f"config key 'method.chunk_size' must be >= 0 (0: no chunking), got {config.chunk_size}"
        )


# (student, teacher, targets, mask, full logits?) -> (distillation loss, student CE or None)
TokenLossFn = Callable[[LMOutputs, LMOutputs, Tensor, Tensor], tuple[Tensor, Tensor | None]]


class LMLoss(nn.Module):
    """``distill + ce_weight * CE(student, labels)`` for one batch, distill given by ``token_loss``."""

    needs_hidden_states = False

    def __init__(self, config: Any, ctx: LossContext) -> None:
        super().__init__()
        check_causal_lm(config.name, ctx.task)
        self.config = config
        self.vocab_size = ctx.vocab_size
        self.chunked = config.chunk_size > 0

    def student_forward(self, student: nn.Module, batch: dict[str, Any]) -> LMOutputs:
        return lm_forward(student, batch["student"], self.chunked)

    def teacher_forward(self, teacher: nn.Module, batch: dict[str, Any]) -> LMOutputs:
        return lm_forward(teacher, batch["teacher"], self.chunked)

    def token_loss(
        self, s: LMOutputs, t: LMOutputs, targets: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def forward(self, s: LMOutputs, t: LMOutputs, batch: dict[str, Any]) -> LossOutput:
        targets, mask = shift(batch)
        distill, ce = self.token_loss(s, t, targets, mask)
        loss = distill
        parts = {"distill": distill.detach()}
        if self.config.ce_weight > 0:
            if ce is None:
                ce = _full_ce(s, targets, mask, self.vocab_size, self.config.chunk_size)
            loss = loss + self.config.ce_weight * ce
        if ce is not None:
            parts["ce"] = ce.detach()
        parts["loss"] = loss.detach()
        return LossOutput(loss, parts)

    # helpers for subclasses --------------------------------------------------------------------------
    def _vocab(self, s: LMOutputs, t: LMOutputs) -> int:
        if self.vocab_size is not None:
            return self.vocab_size
        rows = [x.weight.shape[0] if x.weight is not None else x.logits.shape[-1] for x in (s, t)]
        return min(rows)

    def _full_logits(self, s: LMOutputs, t: LMOutputs) -> tuple[Tensor, Tensor]:
        """(B, T-1, V) logits of both models on the shared vocabulary (fallback path)."""
        v = self._vocab(s, t)
        return _logits(s)[:, :-1, :v], _logits(t)[:, :-1, :v].detach()

    def _chunked_args(self, s: LMOutputs, t: LMOutputs) -> dict[str, Any]:
        return {
            "student_hidden": s.hidden[:, :-1],
            "student_weight": s.weight,
            "teacher_hidden": t.hidden[:, :-1].detach(),
            "teacher_weight": t.weight.detach(),
            "student_bias": s.bias,
            "teacher_bias": None if t.bias is None else t.bias.detach(),
            "vocab_size": self._vocab(s, t),
            "chunk_size": self.config.chunk_size,
        }

    def _topk_args(self, s: LMOutputs, t: LMOutputs) -> dict[str, Any]:
        """The student side for the cached-teacher losses: hidden states + head, or full logits."""
        assert t.topk is not None
        if s.hidden is not None:
            student = {"student_hidden": s.hidden[:, :-1], "student_weight": s.weight, "student_bias": s.bias}
        else:
            student = {"student_hidden": _logits(s)[:, :-1], "student_weight": None}
        return {
            **student,
            "teacher": t.topk,
            "vocab_size": self._vocab_cached(s),
            "tail": t.topk.tail,
            "chunk_size": self.config.chunk_size or 1 << 30,  # 0: all counted tokens at once
        }

    def _vocab_cached(self, s: LMOutputs) -> int:
        if self.vocab_size is not None:
            return self.vocab_size
        return s.weight.shape[0] if s.weight is not None else s.logits.shape[-1]

    def _both_chunked(self, s: LMOutputs, t: LMOutputs) -> bool:
        return s.hidden is not None and t.hidden is not None


def _logits(out: LMOutputs) -> Tensor:
    if out.logits is not None:
        return out.logits
    logits = out.hidden @ out.weight.T
    return logits if out.bias is None else logits + out.bias


def _full_ce(s: LMOutputs, targets: Tensor, mask: Tensor, vocab: int | None, chunk_size: int = 0) -> Tensor:
    """Mean cross-entropy over the counted tokens; with hidden states + head, the logits of the counted
    tokens only (prompt and padding rows are never projected onto the vocabulary), and with
    ``chunk_size > 0`` never more than a chunk of them at once (``chunked_cross_entropy``)."""
    if s.hidden is not None and chunk_size > 0:
        return chunked_cross_entropy(
            s.hidden[:, :-1], s.weight, targets, mask, vocab_size=vocab, chunk_size=chunk_size, bias=s.bias
        )
    if s.hidden is not None:
        rows = s.hidden[:, :-1][mask]  # (n, D)
        logits = rows @ s.weight.T if s.bias is None else rows @ s.weight.T + s.bias  # (n, V')
    else:
        logits = s.logits[:, :-1][mask]  # (n, V')
    logits = logits[:, :vocab] if vocab else logits
    if logits.shape[0] == 0:  # nothing counts: a 0 still connected to the graph
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), targets[mask])


class DivergenceLoss(LMLoss):
    """Token-level ``divergence`` (a name of ``kdkit.losses.DIVERGENCES``) averaged over response tokens."""

    divergence: str = "forward_kl"

    def divergence_kwargs(self) -> dict[str, Any]:
        return {}

    def token_loss(
        self, s: LMOutputs, t: LMOutputs, targets: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        c = self.config
        kwargs = self.divergence_kwargs()
        if t.topk is not None:
            return topk_token_loss(
                **self._topk_args(s, t),
                mask=mask,
                divergence=self.divergence,
                temperature=c.temperature,
                targets=targets if c.ce_weight > 0 else None,
                **kwargs,
            )
        if self._both_chunked(s, t):
            return chunked_token_loss(
                **self._chunked_args(s, t),
                mask=mask,
                divergence=self.divergence,
                temperature=c.temperature,
                targets=targets if c.ce_weight > 0 else None,
                **kwargs,
            )
        from kdkit.losses.divergences import token_divergence

        s_logits, t_logits = self._full_logits(s, t)
        per_token = token_divergence(self.divergence, s_logits, t_logits, temperature=c.temperature, **kwargs)
        distill = per_token.masked_fill(~mask, 0.0).sum() / mask.sum().clamp(min=1)
        return distill, None


class ATKDLoss(LMLoss):
    """ATKD (Zhong et al., ACL 2024) on top of forward or reverse KL; see ``methods/atkd.py``."""

    def token_loss(
        self, s: LMOutputs, t: LMOutputs, targets: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        c = self.config
        kwargs = {
            "hard_ratio": c.hard_ratio,
            "easy_weight": c.easy_weight,
            "reverse": c.base == "reverse",
            "temperature": c.temperature,
            "scope": c.scope,
        }
        if t.topk is not None:
            return topk_atkd_loss(**self._topk_args(s, t), targets=targets, mask=mask, **kwargs)
        if self._both_chunked(s, t):
            return chunked_atkd_loss(**self._chunked_args(s, t), targets=targets, mask=mask, **kwargs)
        from kdkit.losses.atkd import atkd_loss

        s_logits, t_logits = self._full_logits(s, t)
        return atkd_loss(s_logits, t_logits, targets, mask, **kwargs), None


class LMTaskLoss(nn.Module):
    """Supervised fine-tuning of a causal LM (no teacher): cross-entropy on the response tokens, computed in
    chunks of ``chunk_size`` tokens from the final hidden states (``chunked_cross_entropy``), so the batch's
    full-vocabulary logits are never held at once."""

    needs_hidden_states = False

    def __init__(self, vocab_size: int | None = None, chunk_size: int = 1024) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.chunk_size = chunk_size  # tokens per chunk of the CE (0: the counted tokens' logits at once)

    def student_forward(self, student: nn.Module, batch: dict[str, Any]) -> LMOutputs:
        return lm_forward(student, batch["student"], chunked=True)

    def forward(self, s: LMOutputs, t: Any, batch: dict[str, Any]) -> LossOutput:
        targets, mask = shift(batch)
        ce = _full_ce(s, targets, mask, self.vocab_size, self.chunk_size)
        return LossOutput(ce, {"ce": ce.detach()})
