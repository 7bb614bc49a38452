"""FAISS indexes against brute-force search, and the knowledge base: retrieval identities, save/load,
corruption and staleness detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdkit.errors import KdkitError
from kdkit.retrieval.index import IndexSpec, build_index, search
from kdkit.retrieval.kb import KnowledgeBase


def _keys(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _kb(n: int = 50, d: int = 8, c: int = 3, seed: int = 0, **index: object) -> KnowledgeBase:
    g = torch.Generator().manual_seed(seed)
    keys = torch.from_numpy(_keys(n, d, seed))
    soft = torch.softmax(torch.randn(n, c, generator=g) * 3, dim=-1)
    return KnowledgeBase(keys, soft, torch.eye(d), {"index": dict(index)} if index else {})


def test_flat_search_equals_brute_force() -> None:
    keys, queries = _keys(200, 16), _keys(10, 16, seed=1)
    sims, ids = search(build_index(keys, IndexSpec()), queries, 5)
    expected = np.argsort(-(queries @ keys.T), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(queries @ keys.T, expected, 1), rtol=1e-5)


def test_exclude_drops_own_entry_and_keeps_k() -> None:
    keys = _keys(30, 8)
    index = build_index(keys, IndexSpec())
    own = np.arange(30)
    _, ids = search(index, keys, 4, exclude=own)
    assert ids.shape == (30, 4) and not (ids == own[:, None]).any()
    full = np.argsort(-(keys @ keys.T), axis=1)[:, 1:5]  # the top hit of a key is itself
    np.testing.assert_array_equal(ids, full)
    # an excluded id that is not among the hits: the k best are returned unchanged
    _, ids_other = search(index, keys[:1], 4, exclude=np.array([-1]))
    np.testing.assert_array_equal(ids_other, np.argsort(-(keys[:1] @ keys.T), axis=1)[:, :4])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_true_neighbours(kind: str) -> None:
    keys, queries = _keys(2000, 16), _keys(20, 16, seed=2)
    spec = IndexSpec(kind=kind, nprobe=8) if kind == "ivf" else IndexSpec(kind=kind)
    _, ids = search(build_index(keys, spec), queries, 10)
    truth = np.argsort(-(queries @ keys.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert recall > 0.7


def test_retrieve_k1_with_a_key_as_query_returns_its_soft_label() -> None:
    kb = _kb()
    out = kb.retrieve(kb.keys[[3, 17]] * 2.5, k=1, temperature=0.1)  # scale does not matter: cosine
    torch.testing.assert_close(out, kb.soft_labels[[3, 17]])


def test_retrieved_labels_are_distributions_weighted_by_similarity() -> None:
    kb = _kb()
    queries = torch.randn(6, 8)
    out = kb.retrieve(queries, k=5, temperature=0.5)
    assert (out >= 0).all() and torch.allclose(out.sum(-1), torch.ones(6))
    sims = F.normalize(queries, dim=-1) @ kb.keys.T  # reference: plain top-k and softmax
    top = sims.topk(5, dim=-1)
    w = torch.softmax(top.values / 0.5, dim=-1)
    ref = torch.einsum("qk,qkc->qc", w, kb.soft_labels[top.indices])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tmp_path: Path) -> None:
    kb = _kb(kind="hnsw")
    kb.meta["provenance"] = {"teacher": "t", "data": "d", "settings": {"pooling": "cls"}}
    kb.save(tmp_path / "kb")
    loaded = KnowledgeBase.load(tmp_path / "kb")
    for name in ("keys", "soft_labels", "projection"):
        torch.testing.assert_close(getattr(loaded, name), getattr(kb, name), rtol=0, atol=0)
    q = torch.randn(5, 8)
    torch.testing.assert_close(loaded.retrieve(q, 4, 0.1), kb.retrieve(q, 4, 0.1), rtol=0, atol=0)
    assert loaded.meta["entries"] == 50 and loaded.meta["index"]["kind"] == "hnsw"
    assert not [p for p in tmp_path.iterdir() if p.name != "kb"]  # no temp dirs left behind


def test_corrupt_or_missing_files_are_named(tmp_path: Path) -> None:
    kb = _kb()
    kb.save(tmp_path / "kb")
    with open(tmp_path / "kb" / "kb.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(KdkitError, match=r"kb\.safetensors is missing or corrupt"):
        KnowledgeBase.load(tmp_path / "kb")
    (tmp_path / "kb" / "index.faiss").unlink()
    with pytest.raises(KdkitError, match="corrupt"):
        KnowledgeBase.load(tmp_path / "kb")
    with pytest.raises(KdkitError, match="no knowledge base"):
        KnowledgeBase.load(tmp_path / "nowhere")


def test_stale_kb_is_refused() -> None:
    kb = _kb()
    kb.meta["provenance"] = {"teacher": "a" * 64, "data": "b" * 64, "settings": {"pooling": "cls", "dim": 8}}
    kb.check_matches({"teacher": "a" * 64, "data": "b" * 64, "settings": {"pooling": "cls", "dim": 8}}, "kb")
    with pytest.raises(KdkitError, match="different teacher"):
        kb.check_matches({"teacher": "c" * 64, "data": "b" * 64, "settings": {}}, "kb")
    with pytest.raises(KdkitError, match="different training data"):
        kb.check_matches({"teacher": "a" * 64, "data": "c" * 64, "settings": {}}, "kb")
    with pytest.raises(KdkitError, match="pooling='cls', this run asks for 'mean'"):
        kb.check_matches({"teacher": "a" * 64, "data": "b" * 64, "settings": {"pooling": "mean"}}, "kb")
