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

A teacher with another tokenizer: the batch carries the teacher's own ids and the aligned spans
(``kdkit.data.lm_cross``), and a method with ``cross_tokenizer = True`` scores spans instead of positions
(``kdkit.losses.uld.aligned_cross_tokenizer_loss``): ULD, or the hybrid of the method's divergence on the
shared sub-vocabulary and ULD on the rest. Spans are processed in chunks of at most
``chunk_size * 32768 // max(Vs, Vt)`` (at least 1): ``chunk_size`` counts tokens at a 32k vocabulary, so a
262,144-token teacher gets chunks 8x smaller and the same memory per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.config import MethodConfig
from kdkit.data.lm_cross import teacher_rows
from kdkit.data.lm_encode import IGNORE, shift_labels
from kdkit.errors import KdkitError
from kdkit.losses.atkd import atkd_loss
from kdkit.losses.chunked import chunked_atkd_loss, chunked_cross_entropy, chunked_token_loss
from kdkit.losses.divergences import token_divergence
from kdkit.losses.topk import topk_atkd_loss, topk_token_loss
from kdkit.losses.uld import aligned_cross_tokenizer_loss
from kdkit.losses.uld_cached import cached_hybrid_loss, cached_span_rows, cached_uld_loss
from kdkit.methods.base import LM_TASKS, Batch, FinetuneConfig, LossContext, LossOutput, Method
from kdkit.models.causal_lm import LMOutputs, chunkable, lm_forward, lm_logits

shift = shift_labels  # (targets, mask) of a batch: see kdkit.data.lm_encode.shift_labels
__all__ = ["IGNORE", "LMOutputs", "chunkable", "lm_forward", "shift"]


@contextmanager
def _as_kdkit_errors(where: str) -> Iterator[None]:
    """The pure losses raise ValueError for bad arguments; a run reports them as one-line KdkitErrors."""
    try:
        yield
    except ValueError as err:
        raise KdkitError(f"method {where}: {err}") from None


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


def cross_refusal(name: str) -> str:
    return (
        f"method '{name}' needs the teacher's and the student's tokenizers to be the same; with a teacher of "
        "another tokenizer use method 'uld' or a divergence method (forward_kl, reverse_kl, jsd, skew_kl, tvd)"
    )


class LMLoss(Method):
    """``distill + ce_weight * CE(student, labels)`` for one batch, distill given by ``token_loss``.

    The base of every token-level method: the configs carry ``temperature``, ``ce_weight`` and
    ``chunk_size`` (``check_common``)."""

    tasks = LM_TASKS
    config: Any
    spans_only: ClassVar[bool] = False  # scores aligned spans even with one tokenizer (ULD)

    @classmethod
    def check(cls, config: MethodConfig, task: str) -> None:
        check_causal_lm(cls.name, task)

    def __init__(self, config: Any, ctx: LossContext) -> None:
        super().__init__(config, ctx)
        self.vocab_size = ctx.vocab_size
        self.cross = not ctx.same_tokenizer
        if self.cross and not self.cross_tokenizer:
            raise KdkitError(cross_refusal(self.name))
        self.teacher_vocab_size = ctx.teacher_vocab_size
        self.matched = ctx.matched
        self.chunked = config.chunk_size > 0 or self.cross  # spans are always scored from hidden states

    def student_forward(self, student: nn.Module, batch: Batch) -> LMOutputs:
        return lm_forward(student, batch["student"], self.chunked)

    def teacher_forward(self, teacher: nn.Module, batch: Batch) -> LMOutputs:
        return lm_forward(teacher, batch["teacher"], self.chunked)

    def cross_settings(self) -> dict[str, Any]:
        """The span loss's settings: ``divergence`` (and its kwargs) on the shared sub-vocabulary, or None
        for ULD alone; ``top_k``, ``matched_weight``, ``unmatched_weight`` (see ``aligned_cross_tokenizer_loss``)."""
        return {"divergence": None}

    def cross_token_loss(self, s: LMOutputs, t: LMOutputs, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The distillation term over the batch's aligned spans (a teacher with another tokenizer)."""
        a, c = batch["align"], self.config
        settings = dict(self.cross_settings())
        divergence = settings.pop("divergence")
        if t.topk is not None:
            return self._cached_cross_loss(s, t, batch, {"divergence": divergence, **settings})
        s_vocab = self.vocab_size or _rows(s)
        t_vocab = self.teacher_vocab_size or self.vocab_size or _rows(t)
        s_rows = (s.hidden if s.hidden is not None else s.logits)[:, :-1]  # logits: no plain LM head
        t_rows = (t.hidden if t.hidden is not None else t.logits)[:, :-1].detach()
        return aligned_cross_tokenizer_loss(
            s_rows, s.weight, t_rows, None if t.weight is None else t.weight.detach(),
            student_targets=batch["student"]["input_ids"][:, 1:],
            teacher_targets=batch["teacher"]["input_ids"][:, 1:],
            student_groups=a["student_groups"][:, 1:], teacher_groups=a["teacher_groups"][:, 1:],
            student_first=a["student_first"][:, 1:], teacher_first=a["teacher_first"][:, 1:],
            num_groups=int(a["num_groups"]), temperature=c.temperature,
            matched=self.matched if divergence is not None else None,
            divergence=divergence or "forward_kl", student_bias=s.bias,
            teacher_bias=None if t.bias is None else t.bias.detach(),
            student_vocab=s_vocab, teacher_vocab=t_vocab,
            chunk_size=max(1, c.chunk_size * 32768 // max(s_vocab, t_vocab)) if c.chunk_size else 1 << 30,
            **settings,
        )  # fmt: skip

    def _cached_cross_loss(
        self, s: LMOutputs, t: LMOutputs, batch: Batch, settings: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """ULD, or the hybrid, over the aligned spans against a teacher cache that holds the teacher's top-k
        at its own positions (``kdkit.family.cross_cache``, ``kdkit.losses.uld_cached``)."""
        a, c, top = batch["align"], self.config, t.topk
        assert top is not None and top.target_logprobs is not None
        groups, first = a["teacher_groups"][:, 1:], a["teacher_first"][:, 1:]  # (B, T-1) shifted
        start, count = teacher_rows(a["teacher_start"], batch["teacher"]["attention_mask"].sum(1))
        base = count.cumsum(0) - count  # (B,) each example's first row in the batch's rows
        rows = base[:, None] + torch.arange(groups.shape[1], device=groups.device)[None] - start[:, None]
        num_groups = int(a["num_groups"])
        order, factors = cached_span_rows(top.target_logprobs, groups, first, rows, num_groups)
        s_vocab = self.vocab_size or _rows(s)
        student = {
            "student_hidden": (s.hidden if s.hidden is not None else s.logits)[:, :-1],
            "student_weight": s.weight, "student_bias": s.bias, "student_vocab": s_vocab,
            "student_targets": batch["student"]["input_ids"][:, 1:],
            "student_groups": a["student_groups"][:, 1:], "student_first": a["student_first"][:, 1:],
            "num_groups": num_groups, "temperature": c.temperature, "top_k": settings.get("top_k"),
            "teacher_logprobs": top.logprobs.index_select(0, order), "teacher_log_factors": factors,
            "chunk_size": max(1, c.chunk_size * 32768 // s_vocab) if c.chunk_size else 1 << 30,
        }  # fmt: skip
        if settings["divergence"] is None:
            return cached_uld_loss(**student)
        if top.matched_mass is None or self.matched is None:
            raise KdkitError(
                "the teacher cache has no shared-vocabulary mass (built by an older kdkit, or for one "
                "tokenizer): rebuild it with `kdkit cache` for the hybrid"
            )
        s_ids, t_ids = (x.to(rows.device) for x in self.matched)
        t_vocab = self.teacher_vocab_size or int(t_ids.max()) + 1
        to_student = torch.full((t_vocab,), -1, dtype=torch.long, device=rows.device).index_copy(
            0, t_ids, s_ids
        )
        w_m = settings.get("matched_weight")
        w_m = s_ids.numel() / t_vocab if w_m is None else w_m
        w_u = settings.get("unmatched_weight")
        return cached_hybrid_loss(
            **student, teacher_ids=top.indices.index_select(0, order),
            teacher_matched_mass=top.matched_mass.index_select(0, order), teacher_to_student=to_student,
            student_matched=s_ids, divergence=settings["divergence"],
            divergence_kwargs=settings.get("divergence_kwargs"), matched_weight=w_m,
            unmatched_weight=1.0 - w_m if w_u is None else w_u,
        )  # fmt: skip

    def token_loss(
        self, s: LMOutputs, t: LMOutputs, targets: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def forward(self, student_out: LMOutputs, teacher_out: LMOutputs, batch: Batch) -> LossOutput:
        s = student_out
        targets, mask = shift_labels(batch)
        extra: dict[str, Tensor] = {}
        with _as_kdkit_errors(f"'{self.name}'"):
            if "align" in batch:
                (distill, extra), ce = self.cross_token_loss(s, teacher_out, batch), None
            else:
                distill, ce = self.token_loss(s, teacher_out, targets, mask)
        loss = distill
        parts = {"distill": distill.detach(), **extra}
        if self.config.ce_weight > 0:
            if ce is None:
                with _as_kdkit_errors(f"'{self.name}'"):
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


def _rows(out: LMOutputs) -> int:
    return out.weight.shape[0] if out.weight is not None else out.logits.shape[-1]


_logits = lm_logits


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
    cross_tokenizer = True  # across tokenizers: the hybrid, this divergence on the shared sub-vocabulary

    def divergence_kwargs(self) -> dict[str, Any]:
        return {}

    def cross_settings(self) -> dict[str, Any]:
        return {"divergence": self.divergence, "divergence_kwargs": self.divergence_kwargs()}

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
        s_logits, t_logits = self._full_logits(s, t)
        return atkd_loss(s_logits, t_logits, targets, mask, **kwargs), None


class LMTaskLoss(Method):
    """Supervised fine-tuning of a causal LM (no teacher): cross-entropy on the response tokens, computed in
    chunks of ``chunk_size`` tokens from the final hidden states (``chunked_cross_entropy``), so the batch's
    full-vocabulary logits are never held at once."""

    name = "finetune"
    paper = "none: fine-tuning on the task's labels, without a teacher"
    Config = FinetuneConfig
    tasks = LM_TASKS
    needs_teacher = False
    chunk_size = 1024  # tokens per chunk of the CE (0: the counted tokens' logits at once)

    def __init__(self, config: MethodConfig, ctx: LossContext) -> None:
        super().__init__(config, ctx)
        self.vocab_size = ctx.vocab_size

    def student_forward(self, student: nn.Module, batch: Batch) -> LMOutputs:
        return lm_forward(student, batch["student"], chunked=True)

    def forward(self, student_out: LMOutputs, teacher_out: Any, batch: Batch) -> LossOutput:
        targets, mask = shift_labels(batch)
        ce = _full_ce(student_out, targets, mask, self.vocab_size, self.chunk_size)
        return LossOutput(ce, {"ce": ce.detach()})
