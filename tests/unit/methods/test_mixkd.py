"""MixKD (Liang et al., ICLR 2021): mixup math, the loss against vanilla KD, shared pairs, frozen teacher."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from tests.conftest import bert_classifier as _model

from kdkit.config import resolve_method
from kdkit.errors import KdkitError
from kdkit.losses import kd_loss
from kdkit.losses.mixup import mix_attention_mask, mix_embeddings, mix_targets, sample_mixup
from kdkit.methods import METHODS
from kdkit.methods import mixkd as mixkd_module
from kdkit.methods.base import LossContext


def _batch(regression: bool = False, teacher_len: int | None = None, n: int = 6) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)

    def inputs(length: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1, 50, (n, length), generator=g)
        mask = torch.ones_like(ids)
        mask[0, length - 2 :] = 0
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}

    student = inputs(7)
    teacher = student if teacher_len is None else inputs(teacher_len)
    labels = torch.randn(n, generator=g) if regression else torch.randint(0, 3, (n,), generator=g)
    return {"student": student, "teacher": teacher, "labels": labels}


def _loss(raw: dict[str, Any], task: str = "classification", num_labels: int = 3) -> Any:
    config = resolve_method({"name": "mixkd", **raw})
    cfg = _model(num_labels).config
    return METHODS.get("mixkd")(config, LossContext(task, num_labels, cfg, cfg, None, True, seed=7))


def _run(loss_fn: Any, student: Any, teacher: Any, batch: dict[str, Any], step: int = 0) -> Any:
    batch = loss_fn.prepare_batch(batch, step, 0)
    with torch.no_grad():
        t_out = loss_fn.teacher_forward(teacher, batch)
    return loss_fn(loss_fn.student_forward(student, batch), t_out, batch), batch


def test_lambda_zero_and_one_give_the_originals() -> None:
    e = torch.randn(4, 5, 3)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(mix_embeddings(e, torch.ones(4), perm), e)
    torch.testing.assert_close(mix_embeddings(e, torch.zeros(4), perm), e[perm])
    y = torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(
        mix_targets(y, torch.ones(4), perm, 3), torch.nn.functional.one_hot(y, 3).float()
    )
    # at the model level too (full masks, so the union of masks is the example's own)
    model = _model().eval()
    inputs = {"input_ids": torch.randint(1, 50, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.long)}
    with torch.no_grad():
        plain = model(**inputs).logits
        ones = mixkd_module.mixed_forward(model, inputs, torch.ones(4), perm).logits
        zeros = mixkd_module.mixed_forward(model, inputs, torch.zeros(4), perm).logits
    torch.testing.assert_close(ones, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zeros, plain[perm], rtol=1e-5, atol=1e-6)


def test_mixed_targets_stay_on_the_simplex_and_regression_mixes_values() -> None:
    rng = np.random.default_rng(0)
    lam, perm = sample_mixup(64, 0.4, rng)
    assert ((lam >= 0) & (lam <= 1)).all() and sorted(perm.tolist()) == list(range(64))
    y = torch.from_numpy(rng.integers(0, 5, 64))
    soft = mix_targets(y, lam, perm, 5)
    assert (soft >= 0).all()
    torch.testing.assert_close(soft.sum(-1), torch.ones(64))
    values = torch.randn(64)
    torch.testing.assert_close(mix_targets(values, lam, perm, None), lam * values + (1 - lam) * values[perm])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert mix_attention_mask(mask, torch.tensor([1, 0])).tolist() == [[1, 1, 1], [1, 1, 1]]


def test_without_mixup_terms_it_is_exactly_vanilla_kd() -> None:
    teacher, student = _model(seed=0).eval(), _model(seed=1).eval()
    batch = _batch()
    result, _ = _run(_loss({"tmkd_weight": 0, "sm_weight": 0}), student, teacher, batch)
    with torch.no_grad():
        s, t = student(**batch["student"]).logits, teacher(**batch["teacher"]).logits
    expected = 2 * kd_loss(s, t, batch["labels"], temperature=2.0, alpha=0.5)  # CE + 1 * T^2 KL
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert "tmkd" not in result.parts


def test_the_same_lambda_and_pairs_reach_both_models(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    real = mixkd_module.mix_embeddings

    def spy(embeddings: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        seen.append((lam.clone(), perm.clone(), embeddings.shape[1]))
        return real(embeddings, lam, perm)

    monkeypatch.setattr(mixkd_module, "mix_embeddings", spy)
    teacher, student = _model(layers=3, seed=0, vocab=60).eval(), _model(seed=1).train()
    batch = _batch(teacher_len=9)  # the teacher has its own tokenization (longer sequences)
    result, prepared = _run(_loss({}), student, teacher, batch, step=5)
    (t_lam, t_perm, t_len), (s_lam, s_perm, s_len) = seen
    assert (t_len, s_len) == (9, 7)
    torch.testing.assert_close(t_lam, s_lam)
    assert torch.equal(t_perm, s_perm)
    torch.testing.assert_close(prepared["mix"][0], s_lam)
    # drawn from (seed, step, micro): the same step draws the same, another step differs
    again = _loss({}).prepare_batch(batch, 5, 0)["mix"]
    other = _loss({}).prepare_batch(batch, 6, 0)["mix"]
    torch.testing.assert_close(again[0], s_lam)
    assert not torch.allclose(other[0], s_lam)
    assert result.parts["tmkd"] > 0 and result.parts["sm"] > 0


def test_teacher_gets_no_gradient_and_stays_in_eval_mode() -> None:
    teacher = _model(seed=0)
    teacher.eval().requires_grad_(False)  # as the run freezes it
    student = _model(seed=1).train()
    result, _ = _run(_loss({}), student, teacher, _batch())
    result.loss.backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert student.get_input_embeddings().weight.grad.abs().sum() > 0  # mixing is differentiable


def test_zero_distillation_when_student_is_the_teacher() -> None:
    teacher = _model(seed=0).eval()
    result, _ = _run(_loss({}), copy.deepcopy(teacher), teacher, _batch())
    assert result.parts["distill"].item() == pytest.approx(0.0, abs=1e-6)


def test_regression_mixes_targets_and_uses_mse() -> None:
    teacher, student = _model(num_labels=1, seed=0).eval(), _model(num_labels=1, seed=1)
    loss_fn = _loss({}, task="regression", num_labels=1)
    result, batch = _run(loss_fn, student, teacher, _batch(regression=True))
    lam, perm = batch["mix"]
    y = batch["labels"]
    with torch.no_grad():
        s_mix = mixkd_module.mixed_forward(student, batch["student"], lam, perm).logits.reshape(-1)
    expected = ((s_mix - (lam * y + (1 - lam) * y[perm])) ** 2).mean()
    assert result.parts["sm"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_config_checks() -> None:
    for raw, key in [
        ({"alpha": 0}, "alpha"),
        ({"sm_weight": -1}, "sm_weight"),
        ({"temperature": 0}, "temperature"),
    ]:
        with pytest.raises(KdkitError, match=key):
            resolve_method({"name": "mixkd", **raw})
    with pytest.raises(KdkitError, match="classifiers"):
        METHODS.get("mixkd").check(resolve_method({"name": "mixkd"}), "causal_lm")
