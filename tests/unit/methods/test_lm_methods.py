"""Causal-LM methods: the registry contract (finite loss, gradient reaches the student, zero distillation
loss for student == teacher), chunked == full-logits path, prompt masking, CE weight, config checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kdkit.config import resolve_method
from kdkit.errors import KdkitError
from kdkit.losses import atkd_loss, forward_kl, generalized_jsd, uld_loss
from kdkit.methods import METHODS
from kdkit.methods.base import LossContext

LM_METHODS = [n for n in METHODS.names() if "causal_lm" in METHODS.get(n).tasks]
VOCAB = 40  # real vocabulary; the models' embedding rows are padded beyond it


def _llama(layers: int = 2, vocab_rows: int = 48, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_rows,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def _batch() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 9), generator=g)
    attn = torch.ones_like(ids)
    attn[0, 7:] = 0
    labels = ids.clone()
    labels[:, :3] = -100  # prompt
    labels[0, 7:] = -100  # padding
    inputs = {"input_ids": ids, "attention_mask": attn}
    return {"student": inputs, "teacher": inputs, "labels": labels}


def _loss_fn(config: Any, teacher: Any, student: Any) -> Any:
    ctx = LossContext("causal_lm", 0, teacher.config, student.config, None, True, VOCAB)
    return METHODS.get(config.name)(config, ctx)


def _run(config: Any, student: Any, teacher: Any, batch: dict[str, Any]) -> Any:
    loss_fn = _loss_fn(config, teacher, student)
    with torch.no_grad():
        t_out = loss_fn.teacher_forward(teacher.eval(), batch)
    return loss_fn(loss_fn.student_forward(student, batch), t_out, batch)


@pytest.mark.parametrize("name", LM_METHODS)
@pytest.mark.parametrize("chunk_size", [0, 5])
def test_contract(name: str, chunk_size: int) -> None:
    config = resolve_method({"name": name, "chunk_size": chunk_size, "ce_weight": 0.5})
    teacher, student = _llama(seed=0), _llama(layers=1, vocab_rows=56, seed=1)  # padded differently
    result = _run(config, student.train(), teacher, _batch())
    assert result.loss.ndim == 0 and torch.isfinite(result.loss)
    assert result.parts["distill"] > 0 and result.parts["ce"] > 0
    result.loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in teacher.parameters())
    # padded rows beyond the real vocabulary get no gradient from the loss
    assert student.lm_head.weight.grad[VOCAB:].abs().sum() == 0

    same = copy.deepcopy(teacher)
    zero = _run(resolve_method({"name": name, "chunk_size": chunk_size}), same, teacher, _batch())
    assert zero.parts["distill"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", LM_METHODS)
def test_chunked_equals_full_logits(name: str) -> None:
    teacher, student = _llama(seed=0), _llama(layers=1, seed=1)
    values, grads = [], []
    for chunk in (0, 4):
        student.zero_grad()
        result = _run(resolve_method({"name": name, "chunk_size": chunk}), student, teacher, _batch())
        result.loss.backward()
        values.append(result.loss.item())
        grads.append(student.model.layers[0].mlp.down_proj.weight.grad.clone())
    assert values[0] == pytest.approx(values[1], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_forward_kl_matches_the_plain_function_on_shifted_response_tokens() -> None:
    teacher, student = _llama(seed=0), _llama(layers=1, seed=1)
    batch = _batch()
    result = _run(resolve_method({"name": "forward_kl", "temperature": 2.0}), student, teacher, batch)
    with torch.no_grad():
        s = student(**batch["student"]).logits[:, :-1, :VOCAB]
        t = teacher(**batch["teacher"]).logits[:, :-1, :VOCAB]
    mask = batch["labels"][:, 1:] != -100
    assert result.loss.item() == pytest.approx(forward_kl(s, t, mask, temperature=2.0).item(), rel=1e-5)
    jsd = _run(resolve_method({"name": "jsd", "beta": 0.3}), student, teacher, batch)
    assert jsd.loss.item() == pytest.approx(generalized_jsd(s, t, mask, beta=0.3).item(), rel=1e-5)
    targets = batch["labels"][:, 1:].clamp(min=0)
    at = _run(resolve_method({"name": "atkd", "base": "reverse"}), student, teacher, batch)
    assert at.loss.item() == pytest.approx(atkd_loss(s, t, targets, mask, reverse=True).item(), rel=1e-5)


def test_prompt_tokens_do_not_count() -> None:
    teacher, student = _llama(seed=0), _llama(layers=1, seed=1)
    batch = _batch()
    base = _run(resolve_method({"name": "forward_kl"}), student, teacher, batch).loss.item()
    # changing the student's view of the prompt labels (still masked) changes nothing
    other = copy.deepcopy(batch)
    other["labels"][:, :3] = -100
    other["labels"][1, 0] = -100
    assert _run(resolve_method({"name": "forward_kl"}), student, teacher, other).loss.item() == base


def test_lm_methods_refuse_classification_and_kd_refuses_causal_lm() -> None:
    with pytest.raises(KdkitError, match="causal_lm"):
        METHODS.get("atkd").check(resolve_method({"name": "atkd"}), "classification")
    with pytest.raises(KdkitError, match="forward_kl"):
        METHODS.get("kd").check(resolve_method({"name": "kd"}), "causal_lm")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"name": "jsd", "beta": 1.5}, "beta"),
        ({"name": "skew_kl", "alpha": 1.0}, "alpha"),
        ({"name": "atkd", "hard_ratio": -0.1}, "hard_ratio"),
        ({"name": "atkd", "easy_weight": 2}, "easy_weight"),
        ({"name": "atkd", "base": "sideways"}, "base"),
        ({"name": "forward_kl", "temperature": 0}, "temperature"),
        ({"name": "tvd", "chunk_size": -1}, "chunk_size"),
        ({"name": "uld", "top_k": 0}, "top_k"),
        ({"name": "uld", "matched_weight": -1}, "matched_weight"),
        ({"name": "uld", "divergence": "skew_kl"}, "divergence"),
    ],
)
def test_config_ranges(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(KdkitError, match=key):
        resolve_method(raw)


def test_paper_defaults() -> None:
    assert resolve_method({"name": "jsd"}).beta == 0.5
    skew = resolve_method({"name": "skew_kl"})
    assert skew.alpha == 0.1 and skew.reverse is False
    atkd = resolve_method({"name": "atkd"})
    assert (atkd.hard_ratio, atkd.easy_weight, atkd.base) == (0.5, 0.2, "forward")
    uld = resolve_method({"name": "uld"})  # ULD paper: CE + ULD at temperature 1, exact sort; GOLD's hybrid
    assert (uld.ce_weight, uld.temperature, uld.top_k, uld.hybrid) == (1.0, 1.0, None, False)
    assert (uld.divergence, uld.beta, uld.matched_weight, uld.unmatched_weight) == (
        "generalized_jsd",
        0.5,
        None,
        None,
    )


def test_uld_with_one_tokenizer_is_the_plain_uld_loss_on_shifted_response_tokens() -> None:
    teacher, student = _llama(seed=0), _llama(layers=1, seed=1)
    batch = _batch()
    for chunk in (0, 3):
        config = resolve_method({"name": "uld", "temperature": 2.0, "ce_weight": 0.0, "chunk_size": chunk})
        result = _run(config, student, teacher, batch)
        with torch.no_grad():
            s = student(**batch["student"]).logits[:, :-1, :VOCAB]
            t = teacher(**batch["teacher"]).logits[:, :-1, :VOCAB]
        mask = batch["labels"][:, 1:] != -100
        assert result.loss.item() == pytest.approx(uld_loss(s, t, mask, temperature=2.0).item(), rel=1e-5)


def test_a_token_method_that_needs_one_vocabulary_refuses_another_tokenizer() -> None:
    teacher, student = _llama(seed=0), _llama(layers=1, seed=1)
    ctx = LossContext("causal_lm", 0, teacher.config, student.config, None, False, VOCAB)
    with pytest.raises(KdkitError, match="method 'atkd' needs the teacher's and the student's tokenizers"):
        METHODS.get("atkd")(resolve_method({"name": "atkd"}), ctx)
    assert METHODS.get("forward_kl")(resolve_method({"name": "forward_kl"}), ctx).cross
