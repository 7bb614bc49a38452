"""Every registered method: finite loss, gradient reaches the student, zero distillation loss when the
student equals the teacher; plus KD-specific wiring (hidden-state term, regression)."""

from __future__ import annotations

import copy
from dataclasses import fields
from typing import Any

import pytest
import torch
from tests.conftest import bert_classifier as _model

from kdkit.config import resolve_method
from kdkit.errors import KdkitError
from kdkit.methods import METHODS
from kdkit.methods.base import CLASSIFIER_TASKS, LM_TASKS, LossContext


def _batch(num_labels: int = 3, regression: bool = False) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (4, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    labels = torch.randn(4, generator=g) if regression else torch.randint(0, num_labels, (4,), generator=g)
    return {"student": inputs, "teacher": inputs, "labels": labels, "idx": torch.arange(4)}


def _configs(name: str) -> list[Any]:
    """The method's defaults, plus every optional term switched on where the method has one."""
    base = resolve_method({"name": name})
    out = [base]
    names = {f.name for f in fields(base)}
    if "hidden_weight" in names:
        out.append(resolve_method({"name": name, "hidden_weight": 1.0}))
    return out


CLASSIFIER_METHODS = [n for n in METHODS.names() if METHODS.get(n).tasks <= CLASSIFIER_TASKS]
LM_METHODS = [n for n in METHODS.names() if METHODS.get(n).tasks <= LM_TASKS]


def _loss(config: Any, teacher: Any, student: Any, task: str = "classification") -> Any:
    ctx = LossContext(task, teacher.config.num_labels, teacher.config, student.config, None, True)
    if config.name == "reaugkd":
        ctx.resources = identity_kb(teacher, _batch(teacher.config.num_labels), k=2)
    return METHODS.get(config.name)(config, ctx)


def identity_kb(teacher: Any, batch: dict[str, Any], k: int) -> dict[str, Any]:
    """ReAugKD resources over the batch's examples with an identity projection: a student equal to the
    teacher then has z_S = z_T, so its relational loss is zero."""
    from kdkit.retrieval.build import train_neighbours
    from kdkit.retrieval.kb import KnowledgeBase

    with torch.no_grad():
        out = teacher.eval()(**batch["teacher"], output_hidden_states=True)
    cls = out.hidden_states[-1][:, 0]
    kb = KnowledgeBase(
        torch.nn.functional.normalize(cls, dim=-1),
        torch.softmax(out.logits, -1),
        torch.eye(cls.shape[1]),
    )
    return {"kb": kb, "neighbours": train_neighbours(kb, k)}


def _forward(loss_fn: Any, student: Any, teacher: Any, batch: dict[str, Any], step: int = 0) -> Any:
    """As the training loop does it: the method's batch preparation, then teacher and student outputs."""
    batch = loss_fn.prepare_batch(batch, step, 0)
    with torch.no_grad():
        t_out = loss_fn.teacher_forward(teacher.eval(), batch)
    return loss_fn(loss_fn.student_forward(student, batch), t_out, batch)


def test_every_method_is_in_one_family() -> None:
    assert set(CLASSIFIER_METHODS) | set(LM_METHODS) == set(METHODS.names())
    assert not set(CLASSIFIER_METHODS) & set(LM_METHODS)
    for name in METHODS:  # each method's check refuses the other family's tasks
        other = "causal_lm" if name in CLASSIFIER_METHODS else "classification"
        with pytest.raises(KdkitError, match=name):
            METHODS.get(name).check(resolve_method({"name": name}), other)
    assert {"kd"} <= set(CLASSIFIER_METHODS)
    assert {"forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd", "atkd"} <= set(LM_METHODS)


@pytest.mark.parametrize("name", CLASSIFIER_METHODS)
def test_finite_loss_and_gradient_reaches_student(name: str) -> None:
    for config in _configs(name):
        teacher, student = _model(seed=0), _model(seed=1)
        result = _forward(_loss(config, teacher, student), student.train(), teacher, _batch())
        assert result.loss.ndim == 0 and torch.isfinite(result.loss)
        result.loss.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0
        assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", CLASSIFIER_METHODS)
def test_zero_distillation_loss_when_student_equals_teacher(name: str) -> None:
    for config in _configs(name):
        teacher = _model(seed=0)
        student = copy.deepcopy(teacher).eval()
        result = _forward(_loss(config, teacher, student), student, teacher, _batch())
        assert result.parts["distill"].item() == pytest.approx(0.0, abs=1e-6)


def test_kd_hidden_term_uses_layer_map_and_projection() -> None:
    teacher, student = _model(layers=4, seed=0), _model(layers=2, seed=1)
    config = resolve_method({"name": "kd", "hidden_weight": 0.5, "layer_map": [1, 3]})
    loss_fn = _loss(config, teacher, student)
    assert loss_fn.layer_map == [1, 3] and len(loss_fn.proj) == 2
    result = _forward(loss_fn, student, teacher, _batch())
    assert result.parts["hidden"].item() > 0
    result.loss.backward()
    assert loss_fn.proj[0].weight.grad is not None  # the projection learns
    with pytest.raises(KdkitError, match="layer_map"):
        _loss(resolve_method({"name": "kd", "hidden_weight": 1.0, "layer_map": [0, 9]}), teacher, student)


def test_kd_default_layer_map_follows_the_layers_the_student_was_cut_from() -> None:
    teacher, student = _model(layers=4, seed=0), _model(layers=2, seed=1)
    config = resolve_method({"name": "kd", "hidden_weight": 1.0})
    ctx = LossContext("classification", 3, teacher.config, student.config, [0, 3], True)
    assert METHODS.get("kd")(config, ctx).layer_map == [0, 3]
    assert _loss(config, teacher, student).layer_map == [1, 3]  # evenly spaced otherwise


def test_kd_regression_uses_mse_and_rejects_kl() -> None:
    teacher, student = _model(num_labels=1, seed=0), _model(num_labels=1, seed=1)
    with pytest.raises(KdkitError, match="distance=mse"):
        _loss(resolve_method({"name": "kd"}), teacher, student, task="regression")
    config = resolve_method({"name": "kd", "distance": "mse", "alpha": 0.0})
    batch = _batch(regression=True)
    result = _forward(_loss(config, teacher, student, "regression"), student, teacher, batch)
    with torch.no_grad():
        expected = ((student(**batch["student"]).logits - teacher(**batch["teacher"]).logits) ** 2).mean()
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-5)
