"""ReAugKD's retrieval diagnostics against a plain per-example reference, and their identities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdkit.retrieval.diagnose import retrieval_diagnostics, teacher_queries
from kdkit.retrieval.kb import KnowledgeBase


def _setup(n: int = 60, kb_size: int = 50, d_t: int = 12, d: int = 6, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    projection = torch.randn(d, d_t, generator=g)
    kb_feats = torch.randn(kb_size, d_t, generator=g)
    soft = torch.softmax(torch.randn(kb_size, 3, generator=g) * 2, -1)
    kb = KnowledgeBase(F.normalize(kb_feats @ projection.T, dim=-1), soft, projection)
    t_feats = torch.randn(n, d_t, generator=g)
    t_logits = torch.randn(n, 3, generator=g)
    s_emb = torch.randn(n, d, generator=g)
    s_logits = torch.randn(n, 3, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return kb, t_feats, t_logits, s_emb, s_logits, labels


def _reference(kb: KnowledgeBase, query: torch.Tensor, k: int, tau: float) -> tuple[int, set[int]]:
    """One query, brute force: cosine to every key, the top k, softmax(sim / tau) weights."""
    sims = F.normalize(query, dim=0) @ kb.keys.T
    top = sims.topk(k)
    weights = torch.softmax(top.values / tau, 0)
    return int((weights[:, None] * kb.soft_labels[top.indices]).sum(0).argmax()), set(top.indices.tolist())


@pytest.mark.parametrize("k,tau", [(1, 0.1), (5, 0.1), (8, 1.0)])
def test_diagnostics_match_a_per_example_reference(k: int, tau: float) -> None:
    kb, t_feats, t_logits, s_emb, s_logits, labels = _setup()
    got = retrieval_diagnostics(
        kb, t_feats, t_logits, s_emb, s_logits, labels, k, tau, "classification", "accuracy"
    )
    queries = F.normalize(t_feats @ kb.projection.T, dim=-1)
    t_hits = s_hits = agree_t = agree_s = 0
    overlap = 0.0
    for i in range(len(labels)):
        t_pred, t_set = _reference(kb, queries[i], k, tau)
        s_pred, s_set = _reference(kb, s_emb[i], k, tau)
        t_hits += t_pred == labels[i]
        s_hits += s_pred == labels[i]
        agree_t += s_pred == t_logits[i].argmax()
        agree_s += s_pred == s_logits[i].argmax()
        overlap += len(t_set & s_set) / k
    n = len(labels)
    assert got["teacher_knn"] == pytest.approx(t_hits / n)
    assert got["student_knn"] == pytest.approx(s_hits / n)
    assert got["agree_teacher"] == pytest.approx(agree_t / n)
    assert got["agree_student"] == pytest.approx(agree_s / n)
    assert got["neighbour_overlap"] == pytest.approx(overlap / n)
    assert got["teacher"] == pytest.approx(float((t_logits.argmax(-1) == labels).float().mean()))
    assert got["student_alone"] == pytest.approx(float((s_logits.argmax(-1) == labels).float().mean()))


def test_a_student_that_queries_like_the_teacher_reaches_the_ceiling() -> None:
    kb, t_feats, t_logits, _, s_logits, labels = _setup(seed=3)
    same = teacher_queries(t_feats, kb) * 2.5  # the teacher's query, scaled: cosine ignores the scale
    got = retrieval_diagnostics(
        kb, t_feats, t_logits, same, s_logits, labels, 4, 0.1, "classification", "accuracy"
    )
    assert got["student_knn"] == pytest.approx(got["teacher_knn"])
    assert got["neighbour_overlap"] == pytest.approx(1.0)


def test_a_kb_of_the_queries_themselves_finds_their_own_labels() -> None:
    """Queries equal to KB keys with one-hot soft labels of the gold class: k = 1 retrieval is exact."""
    kb, t_feats, t_logits, _, s_logits, _ = _setup(n=50, kb_size=50, seed=5)
    labels = torch.arange(50) % 3
    exact = KnowledgeBase(teacher_queries(t_feats, kb), F.one_hot(labels, 3).float(), kb.projection)
    got = retrieval_diagnostics(
        exact, t_feats, t_logits, exact.keys, s_logits, labels, 1, 0.1, "classification", "accuracy"
    )
    assert got["teacher_knn"] == 1.0 and got["student_knn"] == 1.0 and got["neighbour_overlap"] == 1.0
