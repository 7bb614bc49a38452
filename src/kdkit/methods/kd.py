"""Vanilla knowledge distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
Network", 2015, arXiv 1503.02531), with an optional hidden-state transfer term.

Loss for a batch (Section 2 of the paper, KL form; see ``kdkit.losses.kd_loss``):

    alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))
      + hidden_weight * mean_l MSE(W_l h_s^(l), h_t^(map(l)))

``distance: mse`` replaces the KL term with the MSE between logits (Ba and Caruana, 2014); regression
always uses it (a single real output has no distribution to soften). The hidden-state term follows
FitNets/TinyBERT (Romero et al. 2015; Jiao et al. 2020): each student layer's output, projected by a
learned linear map W_l (initialised to the identity when widths agree), regresses onto a teacher layer.

Defaults: the paper fixes no single T or weighting ("a considerably lower weight on the second objective"
for hard labels, temperatures from 2.5 to 20 on MNIST); we use T = 2 and alpha = 0.5, common for BERT
students (e.g. DistilBERT uses T = 2), and state it here and in docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from kdkit.config import MethodConfig
from kdkit.errors import KdkitError
from kdkit.losses import hidden_mse, kd_loss, kd_mse_loss
from kdkit.methods.base import CLASSIFIER_TASKS, Batch, LossContext, LossOutput, Method


@dataclass
class KDConfig(MethodConfig):
    """Vanilla KD (Hinton et al., 2015)."""

    name: str = "kd"  # method name
    alpha: float = 0.5  # weight of the hard-label loss; 1 - alpha goes to the distillation term
    temperature: float = 2.0  # softmax temperature T of both models (KL term scaled by T^2)
    distance: Literal["kl", "mse"] = "kl"  # distillation term: KL of softened outputs, or MSE of logits
    hidden_weight: float = 0.0  # weight of the hidden-state MSE term; 0 disables it
    layer_map: list[int] | None = None  # teacher layer (0-based) for each student layer; null: see docs

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise KdkitError(f"config key 'method.alpha' must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise KdkitError(f"config key 'method.temperature' must be > 0, got {self.temperature}")
        if self.hidden_weight < 0:
            raise KdkitError(f"config key 'method.hidden_weight' must be >= 0, got {self.hidden_weight}")


def default_layer_map(student_layers: list[int] | None, n_student: int, n_teacher: int) -> list[int]:
    """The teacher layers a student was cut from; else evenly spaced, ending at the top layer."""
    if student_layers is not None and len(student_layers) == n_student:
        return list(student_layers)
    return [(k + 1) * n_teacher // n_student - 1 for k in range(n_student)]


class KD(Method):
    """Vanilla KD, with an optional hidden-state transfer term (see the module docstring)."""

    name = "kd"
    paper = (
        'Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015 (arXiv 1503.02531)'
    )
    Config = KDConfig
    tasks = CLASSIFIER_TASKS
    config: KDConfig

    @classmethod
    def check(cls, config: MethodConfig, task: str) -> None:
        if task == "causal_lm":
            raise KdkitError(
                "method 'kd' is for classifiers; for task: causal_lm use forward_kl, reverse_kl, jsd, skew_kl, "
                "tvd or atkd"
            )
        if task == "regression" and getattr(config, "distance", "kl") == "kl":
            raise KdkitError("method 'kd' on a regression task needs method.distance=mse (one real output)")

    @classmethod
    def needs_hidden_states(cls, config: MethodConfig) -> bool:
        return getattr(config, "hidden_weight", 0.0) > 0

    def __init__(self, config: KDConfig, ctx: LossContext) -> None:
        super().__init__(config, ctx)
        self.layer_map: list[int] = []
        self.proj = nn.ModuleList()
        if self.needs_hidden_states(config):
            if not ctx.same_tokenizer:
                raise KdkitError(
                    "method.hidden_weight > 0 pairs tokens, so teacher and student need the same tokenizer"
                )
            assert ctx.teacher_config is not None
            n_s, n_t = ctx.student_config.num_hidden_layers, ctx.teacher_config.num_hidden_layers
            self.layer_map = config.layer_map or default_layer_map(ctx.student_layers, n_s, n_t)
            if len(self.layer_map) != n_s or not all(0 <= i < n_t for i in self.layer_map):
                raise KdkitError(
                    f"method.layer_map must give one teacher layer in 0..{n_t - 1} for each of the "
                    f"{n_s} student layers, got {self.layer_map}"
                )
            d_s, d_t = ctx.student_config.hidden_size, ctx.teacher_config.hidden_size
            for _ in self.layer_map:
                lin = nn.Linear(d_s, d_t)
                if d_s == d_t:  # start from "no change" so an identical student has zero loss
                    nn.init.eye_(lin.weight)
                    nn.init.zeros_(lin.bias)
                self.proj.append(lin)

    def forward(self, student_out: Any, teacher_out: Any, batch: Batch) -> LossOutput:
        c = self.config
        s, t = student_out.logits, teacher_out.logits.detach()
        labels = batch.get("labels")
        if c.distance == "mse" or self.task == "regression":
            loss = kd_mse_loss(s, t, labels, alpha=c.alpha, regression=self.task == "regression")
            distill = kd_mse_loss(s, t, None)
        else:
            loss = kd_loss(s, t, labels, temperature=c.temperature, alpha=c.alpha)
            distill = kd_loss(s, t, None, temperature=c.temperature)
        parts = {"kd": distill.detach()}
        if self.layer_map:
            # hidden_states[0] is the embedding output; layer l's output is hidden_states[l + 1]
            hs = [p(h) for p, h in zip(self.proj, student_out.hidden_states[1:], strict=True)]
            ht = [teacher_out.hidden_states[i + 1].detach() for i in self.layer_map]
            hidden = hidden_mse(hs, ht, batch["student"]["attention_mask"])
            loss = loss + c.hidden_weight * hidden
            distill = distill + c.hidden_weight * hidden
            parts["hidden"] = hidden.detach()
        parts["distill"] = distill.detach()  # everything but the hard-label term (the method contract)
        parts["loss"] = loss.detach()
        return LossOutput(loss, parts)
