"""ReAugKD: candidate sets, the loss against a plain reference, the frozen KB, the projection head."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tests.conftest import bert_classifier
from tests.unit.methods.test_contract import _batch, _forward, identity_kb

from kdkit.config import resolve_method
from kdkit.errors import KdkitError
from kdkit.losses import kd_loss, supcon_loss
from kdkit.methods import METHODS
from kdkit.methods.base import LossContext
from kdkit.methods.reaugkd import candidates
from kdkit.retrieval.build import KBSettings, build_kb, train_projection


def _loss(teacher: Any, student: Any, resources: dict[str, Any], **fields: Any) -> Any:
    config = resolve_method({"name": "reaugkd", **fields})
    ctx = LossContext("classification", 3, teacher.config, student.config, None, True, resources=resources)
    return METHODS.get("reaugkd")(config, ctx)


def test_candidates_exclude_self_and_count_batch_neighbours_once() -> None:
    neighbours = torch.tensor([[1, 5], [0, 2], [7, 1], [0, 1], [0, 1], [0, 1], [0, 1], [0, 1]])
    ids, mask = candidates(torch.tensor([0, 1, 2]), neighbours)
    assert ids.tolist() == [[1, 5, 0, 1, 2], [0, 2, 0, 1, 2], [7, 1, 0, 1, 2]]
    # neighbour 1 of example 0 is in the batch: counted in the batch part only; self never counts
    assert mask.tolist() == [
        [False, True, False, True, True],
        [False, False, True, False, True],
        [True, False, True, True, False],
    ]


def _reference(loss_fn: Any, student: Any, teacher: Any, batch: dict[str, Any], tau: float) -> float:
    """kd_loss plus the relational KL written as a loop over examples and python candidate sets."""
    with torch.no_grad():
        s = student(**batch["student"], output_hidden_states=True)
        t = teacher(**batch["teacher"])
    total = kd_loss(s.logits, t.logits, batch["labels"], temperature=2.0, alpha=0.5).item()
    keys, idx = loss_fn.keys, batch["idx"].tolist()
    rel = 0.0
    for row, i in enumerate(idx):
        cands = sorted((set(loss_fn.neighbours[i].tolist()) | set(idx)) - {i})
        k = keys[cands]
        zs = F.normalize(s.hidden_states[-1][row, 0], dim=-1)
        p = torch.softmax(k @ keys[i] / tau, -1)
        q = torch.softmax(k @ zs / tau, -1)
        rel += float((p * (p.log() - q.log())).sum())
    return total + rel / len(idx)


def test_loss_matches_the_plain_reference() -> None:
    teacher, student = bert_classifier(seed=0), bert_classifier(seed=1)
    batch = _batch()
    loss_fn = _loss(teacher, student, identity_kb(teacher, batch, k=2), tau=0.5)
    result = _forward(loss_fn, student.eval(), teacher, batch)
    assert result.loss.item() == pytest.approx(_reference(loss_fn, student, teacher, batch, 0.5), rel=1e-5)
    assert result.parts["rel"].item() > 0


def test_relational_loss_is_zero_when_student_embeddings_equal_teacher_keys() -> None:
    teacher = bert_classifier(seed=0)
    batch = _batch()
    result = _forward(
        _loss(teacher, copy.deepcopy(teacher), identity_kb(teacher, batch, k=2)), teacher, teacher, batch
    )
    assert result.parts["rel"].item() == pytest.approx(0.0, abs=1e-6)


def test_the_alignment_option_adds_its_weighted_cosine_distance() -> None:
    """align_weight (kdkit's, off by default): the loss gains align_weight * mean(1 - cos(z_S_i, key_i)),
    written here as a loop; with the student equal to the teacher the term is 0."""
    teacher, student = bert_classifier(seed=0), bert_classifier(seed=1)
    batch = _batch()
    kb = identity_kb(teacher, batch, k=2)
    loss_fn = _loss(teacher, student, kb, tau=0.5, align_weight=0.7)
    result = _forward(loss_fn, student.eval(), teacher, batch)
    with torch.no_grad():
        hidden = student(**batch["student"], output_hidden_states=True).hidden_states[-1]
    keys = loss_fn.keys
    cos = [float(F.cosine_similarity(hidden[row, 0], keys[i], dim=0)) for row, i in enumerate(batch["idx"])]
    align = sum(1 - c for c in cos) / len(cos)
    assert result.parts["align"].item() == pytest.approx(align, rel=1e-5)
    want = _reference(loss_fn, student, teacher, batch, 0.5) + 0.7 * align
    assert result.loss.item() == pytest.approx(want, rel=1e-5)
    same = _forward(_loss(teacher, copy.deepcopy(teacher), kb, align_weight=0.7), teacher, teacher, batch)
    assert same.parts["align"].item() == pytest.approx(0.0, abs=1e-6)
    assert "align" not in _forward(_loss(teacher, student, kb), student, teacher, batch).parts
    with pytest.raises(KdkitError, match="align_weight"):
        resolve_method({"name": "reaugkd", "align_weight": -1})


def test_kb_gets_no_gradient_and_teacher_stays_frozen() -> None:
    teacher, student = bert_classifier(seed=0), bert_classifier(seed=1)
    batch = _batch()
    resources = identity_kb(teacher, batch, k=2)
    before = resources["kb"].keys.clone()
    loss_fn = _loss(teacher, student, resources)
    teacher.requires_grad_(False)
    result = _forward(loss_fn, student.train(), teacher, batch)
    result.loss.backward()
    assert loss_fn.keys.grad is None and not loss_fn.keys.requires_grad
    assert torch.equal(resources["kb"].keys, before) and not list(loss_fn.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_loss_refuses_what_it_cannot_use() -> None:
    teacher, student = bert_classifier(seed=0), bert_classifier(seed=1)
    with pytest.raises(KdkitError, match="needs its knowledge base"):
        _loss(teacher, student, {})
    resources = identity_kb(teacher, _batch(), k=2)
    wide = bert_classifier(seed=1)
    wide.config.hidden_size = 32
    with pytest.raises(KdkitError, match="16 dims, the student's hidden size is 32"):
        _loss(teacher, wide, resources)
    with pytest.raises(KdkitError, match="regression"):
        METHODS.get("reaugkd").check(resolve_method({"name": "reaugkd"}), "regression")
    for bad in ({"beta": 1.5}, {"tau": 0.0}, {"k": 0}, {"alpha": -0.1}, {"index": "lsh"}):
        with pytest.raises(KdkitError, match="method"):
            resolve_method({"name": "reaugkd", **bad})


def test_projection_head_learns_the_supervised_contrastive_task() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    features = torch.randn(64, 12, generator=g) + 0.8 * labels.view(-1, 1).float()  # weakly separable
    settings = KBSettings(dim=6, head_epochs=30, head_batch_size=32, head_lr=1e-2)
    weight = train_projection(features, labels, settings, show=False)
    assert weight.shape == (6, 12)
    untrained = KBSettings(dim=6, head_epochs=0)
    w0 = train_projection(features, labels, untrained, show=False)
    assert supcon_loss(features @ weight.T, labels).item() < supcon_loss(features @ w0.T, labels).item() - 0.1
    torch.testing.assert_close(train_projection(features, labels, settings, show=False), weight)  # seeded


def test_build_kb_holds_normalised_keys_and_teacher_soft_labels() -> None:
    teacher = bert_classifier(seed=0).eval()
    batch = _batch()
    loader = [batch, batch]
    settings = KBSettings(dim=4, head_epochs=2, label_temperature=2.0, pooling="mean")
    kb = build_kb(
        teacher, loader, torch.cat([batch["labels"]] * 2), Accelerator(cpu=True), settings, {}, None
    )
    assert len(kb) == 8 and kb.dim == 4 and kb.meta["teacher_dim"] == 16
    torch.testing.assert_close(kb.keys.norm(dim=-1), torch.ones(8))
    with torch.no_grad():
        logits = teacher(**batch["teacher"]).logits
    torch.testing.assert_close(kb.soft_labels[:4], torch.softmax(logits / 2.0, -1))
