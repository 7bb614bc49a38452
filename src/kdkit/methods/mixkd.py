"""MixKD: mixup distillation for encoder classifiers (Liang et al., "MixKD: Towards Efficient Distillation
of Large-scale Language Models", ICLR 2021, arXiv 2011.00593, Section 3).

Besides the original examples, the student mimics the teacher on interpolations of example pairs, which
helps most when task data is scarce. Pairs are (i, perm(i)) for a random in-batch permutation, with a
weight ``lam ~ Beta(alpha, alpha)`` per pair; each model mixes its *own* word embeddings with the same lam
and pairs (teacher and student may have different tokenizers: each side's pair is aligned position by
position on its own padded batch), the attention mask of a mixed pair is the union of the two masks, and
position and segment embeddings are added by the model as usual (``kdkit.losses.mixup``). Loss:

    CE(s(x), y) + kd_weight * KD(t(x), s(x)) + tmkd_weight * KD(t(x~), s(x~)) + sm_weight * CE(s(x~), y~)

with ``y~ = lam * y_i + (1 - lam) * y_perm(i)`` (one-hot or regression values; regression uses MSE for
both CE terms). KD is ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (``distance: kl``) or the MSE between
logits (``distance: mse``; always for regression). The teacher is frozen, in eval mode, without gradient.

Choices (the paper tunes its weights per task and does not fix them): ``alpha = 0.4`` for Beta(a, a), all
weights 1 and T = 2 (as ``kd``). With ``tmkd_weight = sm_weight = 0`` no mixed example is built and the
loss is exactly ``CE + kd_weight * KD``, i.e. ``2 * kd_loss(alpha=0.5)`` at the defaults. Segment ids of a
mixed pair are those of its heavier member. lam and pairs are drawn per micro-batch from
(train.seed, step, micro-batch), so resumed runs draw the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.config import MethodConfig
from kdkit.data.augment import concat, read_texts, teacher_labelled
from kdkit.errors import KdkitError
from kdkit.losses import kd_mse_loss, soft_kl
from kdkit.losses.mixup import (
    mix_attention_mask,
    mix_embeddings,
    mix_segments,
    mix_targets,
    sample_mixup,
    soft_cross_entropy,
)
from kdkit.methods.base import CLASSIFIER_TASKS, Batch, DataEnv, LossContext, LossOutput, Method, task_loss
from kdkit.models.paraphrase import generate_texts


@dataclass
class MixKDConfig(MethodConfig):
    """MixKD (Liang et al., ICLR 2021): KD on original and embedding-mixup examples."""

    name: str = "mixkd"  # method name
    alpha: float = 0.4  # mixup: lam ~ Beta(alpha, alpha) per pair
    kd_weight: float = 1.0  # weight of KD(t(x), s(x)) on the original examples
    tmkd_weight: float = 1.0  # weight of KD(t(x~), s(x~)) on the mixed examples
    sm_weight: float = 1.0  # weight of CE(s(x~), y~), the student's own mixup loss
    temperature: float = 2.0  # softmax temperature T of the KL terms (scaled by T^2)
    distance: Literal["kl", "mse"] = "kl"  # KD term: KL of softened outputs, or MSE of logits
    augment_file: str | None = None  # extra unlabeled texts (data.text column; paraphrases), teacher-labelled
    augment_model: str | None = None  # or a seq2seq model (hub id / dir) that rewrites each training text
    augment_per_example: int = 1  # augment_model: rewrites per training text
    augment_max_new_tokens: int = 64  # augment_model: length limit of a rewrite

    def __post_init__(self) -> None:
        if self.augment_file and self.augment_model:
            raise KdkitError("set method.augment_file or method.augment_model, not both")
        if self.augment_per_example < 1 or self.augment_max_new_tokens < 1:
            raise KdkitError("method.augment_per_example and method.augment_max_new_tokens must be >= 1")
        if self.alpha <= 0:
            raise KdkitError(f"config key 'method.alpha' must be > 0, got {self.alpha}")
        for key in ("kd_weight", "tmkd_weight", "sm_weight"):
            if getattr(self, key) < 0:
                raise KdkitError(f"config key 'method.{key}' must be >= 0, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise KdkitError(f"config key 'method.temperature' must be > 0, got {self.temperature}")


log = logging.getLogger(__name__)


def mixed_forward(model: nn.Module, inputs: dict[str, Tensor], lam: Tensor, perm: Tensor) -> Any:
    """The model on the mixed pairs of a batch: its own word embeddings mixed, masks united."""
    embed = model.get_input_embeddings()(inputs["input_ids"])  # (B, T, D)
    lam = lam.to(embed.device)
    perm = perm.to(embed.device)
    kwargs: dict[str, Tensor] = {
        "inputs_embeds": mix_embeddings(embed, lam, perm),
        "attention_mask": mix_attention_mask(inputs["attention_mask"], perm),
    }
    if "token_type_ids" in inputs:
        kwargs["token_type_ids"] = mix_segments(inputs["token_type_ids"], lam, perm)
    return model(**kwargs)


class MixKD(Method):
    """MixKD: KD on the original examples and on embedding-mixup pairs (see the module docstring)."""

    name = "mixkd"
    paper = (
        'Liang et al., "MixKD: Towards Efficient Distillation of Large-scale Language Models", ICLR 2021 '
        "(arXiv 2011.00593)"
    )
    Config = MixKDConfig
    tasks = CLASSIFIER_TASKS
    cacheable = False  # the teacher sees the mixed embeddings: its outputs cannot be cached
    config: MixKDConfig

    @classmethod
    def check(cls, config: MethodConfig, task: str) -> None:
        if task == "causal_lm":
            raise KdkitError(
                "method 'mixkd' is for classifiers and regression; for causal_lm use forward_kl etc."
            )

    @classmethod
    def extend_data(cls, config: MethodConfig, env: DataEnv) -> tuple[Any, int]:
        """Section 3.2's augmentation: extra texts from ``augment_file`` or rewritten by ``augment_model``,
        labelled by the teacher, appended to train (they join the pool that pairs are drawn from)."""
        assert isinstance(config, MixKDConfig)
        if not config.augment_file and not config.augment_model:
            return env.data, 0
        if env.label is None:
            raise KdkitError("method.augment_file / augment_model need the live teacher to label the texts")
        train = env.data.split("train")
        if config.augment_file:
            texts, pairs = read_texts(config.augment_file, env.config.data)
        else:
            k = config.augment_per_example
            texts = generate_texts(
                config.augment_model,
                train.texts,
                per_example=k,
                max_new_tokens=config.augment_max_new_tokens,
                seed=env.config.train.seed,
            )
            pairs = None if train.text_pairs is None else [p for p in train.text_pairs for _ in range(k)]
        extra = teacher_labelled(texts, pairs, env.label, env.config.task)
        log.info(
            "augmentation: %d teacher-labelled texts added to %d training examples", len(texts), len(train)
        )
        return replace(env.data, train=concat(train, extra)), len(texts)

    def __init__(self, config: MixKDConfig, ctx: LossContext) -> None:
        super().__init__(config, ctx)
        self.num_classes = None if ctx.task == "regression" else ctx.num_labels
        self.seed = ctx.seed
        self.mixing = config.tmkd_weight > 0 or config.sm_weight > 0

    def prepare_batch(self, batch: Batch, step: int, micro: int) -> Batch:
        """Draw lam and the pairs for this micro-batch (shared by teacher and student)."""
        if self.mixing:
            rng = np.random.default_rng([self.seed, step, micro])
            batch = {**batch, "mix": sample_mixup(len(batch["labels"]), self.config.alpha, rng)}
        return batch

    def _outputs(self, model: nn.Module, inputs: dict[str, Tensor], batch: Batch) -> tuple[Any, Any]:
        out = model(**inputs)
        mixed = mixed_forward(model, inputs, *batch["mix"]) if self.mixing else None
        return out, mixed

    def student_forward(self, student: nn.Module, batch: Batch) -> tuple[Any, Any]:
        return self._outputs(student, batch["student"], batch)

    def teacher_forward(self, teacher: nn.Module, batch: Batch) -> tuple[Any, Any]:
        return self._outputs(teacher, batch["teacher"], batch)

    def _kd(self, s: Tensor, t: Tensor) -> Tensor:
        if self.config.distance == "mse" or self.task == "regression":
            return kd_mse_loss(s, t, None)
        return self.config.temperature**2 * soft_kl(s, t, self.config.temperature).mean()

    def forward(self, student_out: Any, teacher_out: Any, batch: Batch) -> LossOutput:
        c = self.config
        (s, s_mix), (t, t_mix) = student_out, teacher_out
        ce = task_loss(s.logits, batch["labels"], self.task)
        kd = self._kd(s.logits, t.logits.detach())
        loss = ce + c.kd_weight * kd
        distill = c.kd_weight * kd
        parts = {"ce": ce.detach(), "kd": kd.detach()}
        if self.mixing:
            lam, perm = batch["mix"]
            tmkd = self._kd(s_mix.logits, t_mix.logits.detach())
            y_mix = mix_targets(batch["labels"], lam, perm, self.num_classes)
            if self.task == "regression":
                sm = F.mse_loss(s_mix.logits.float().reshape(-1), y_mix)
            else:
                sm = soft_cross_entropy(s_mix.logits, y_mix)
            loss = loss + c.tmkd_weight * tmkd + c.sm_weight * sm
            distill = distill + c.tmkd_weight * tmkd
            parts.update({"tmkd": tmkd.detach(), "sm": sm.detach()})
        parts["distill"] = distill.detach()  # the teacher-matching terms (zero when student == teacher)
        parts["loss"] = loss.detach()
        return LossOutput(loss, parts)
