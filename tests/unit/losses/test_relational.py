"""ReAugKD loss math and the supervised contrastive loss against plain loop references and identities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdkit.losses.relational import (
    aggregate_neighbours,
    query_alignment,
    relational_kl,
    retrieval_augmented,
    supcon_loss,
)


def _supcon_reference(z: torch.Tensor, y: torch.Tensor, tau: float) -> float:
    z = F.normalize(z.double(), dim=-1)
    total, anchors = 0.0, 0
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        pos = [p for p in others if y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in others)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos) / len(pos)
        anchors += 1
    return total / anchors


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_supcon_matches_the_loop_reference(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(9, 5, generator=g)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 1, 3, 2])  # class 3 has a single member: no positives
    assert supcon_loss(z, y, tau).item() == pytest.approx(_supcon_reference(z, y, tau), rel=1e-5)


def test_supcon_without_positives_is_a_connected_zero() -> None:
    z = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(z, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all()


def _relational_reference(s, t, keys, mask, tau) -> float:
    total, rows = 0.0, 0
    for i in range(len(s)):
        idx = [j for j in range(keys.shape[1]) if mask[i, j]]
        if not idx:
            continue
        k = F.normalize(keys[i, idx].double(), dim=-1)
        p = torch.softmax(k @ F.normalize(t[i].double(), dim=-1) / tau, 0)
        q = torch.softmax(k @ F.normalize(s[i].double(), dim=-1) / tau, 0)
        total += float((p * (p.log() - q.log())).sum())
        rows += 1
    return total / rows


def test_relational_kl_matches_reference_and_respects_the_mask() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    keys = torch.randn(4, 5, 6, generator=g)
    mask = torch.rand(4, 5, generator=g) > 0.3
    mask[2] = False  # a row with no candidates contributes nothing
    got = relational_kl(s, t, keys, mask, temperature=0.5).item()
    assert got == pytest.approx(_relational_reference(s, t, keys, mask, 0.5), rel=1e-5)
    # masked candidates change nothing, whatever they hold
    other = keys.clone()
    other[~mask] = 1e3
    assert relational_kl(s, t, other, mask, temperature=0.5).item() == pytest.approx(got, rel=1e-6)


def test_relational_kl_is_zero_when_the_student_equals_the_teacher_and_keys_get_no_gradient() -> None:
    t = torch.randn(5, 8)
    keys = torch.randn(30, 8, requires_grad=True)  # a shared KB
    s = t.clone().requires_grad_(True)
    loss = relational_kl(s, t, keys)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    (loss + relational_kl(s + torch.randn(5, 8), t, keys)).backward()
    assert keys.grad is None  # the KB is data, never trained through this loss
    assert s.grad is not None


def test_aggregation_and_final_mixture() -> None:
    sims = torch.tensor([[0.9, 0.1], [0.3, 0.3]])
    labels = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.2, 0.8], [0.6, 0.4]]])
    agg = aggregate_neighbours(sims, labels, temperature=0.1)
    torch.testing.assert_close(agg.sum(-1), torch.ones(2))
    torch.testing.assert_close(agg[1], torch.tensor([0.4, 0.6]))  # equal similarities: plain mean
    one = aggregate_neighbours(sims[:, :1], labels[:, :1])  # k = 1: that entry's teacher label
    torch.testing.assert_close(one, labels[:, 0])
    student = torch.tensor([[0.7, 0.3], [0.1, 0.9]])
    torch.testing.assert_close(retrieval_augmented(student, agg, beta=0.0), student)
    torch.testing.assert_close(retrieval_augmented(student, agg, beta=1.0), agg)
    torch.testing.assert_close(retrieval_augmented(student, agg).sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="beta"):
        retrieval_augmented(student, agg, beta=1.5)


def test_query_alignment_is_the_mean_cosine_distance() -> None:
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    want = sum(1 - float(F.cosine_similarity(s[i].double(), t[i].double(), dim=0)) for i in range(5)) / 5
    assert query_alignment(s, t).item() == pytest.approx(want, rel=1e-6)
    assert query_alignment(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # scale does not count
    assert query_alignment(-t, t).item() == pytest.approx(2.0, abs=1e-6)
    s.requires_grad_(True)
    query_alignment(s, t).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
