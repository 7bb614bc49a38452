"""ReAugKD inference: beta endpoints, distributions, and a saved predictor that predicts what it did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import tiny_bert

from kdkit.errors import KdkitError
from kdkit.retrieval.kb import KnowledgeBase
from kdkit.retrieval.predictor import ReAugPredictor, RetrievalSettings, combine


def _kb(d: int = 8, n: int = 40, c: int = 2) -> KnowledgeBase:
    g = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    return KnowledgeBase(keys, torch.softmax(torch.randn(n, c, generator=g) * 2, -1), torch.eye(d))


def test_beta_zero_is_the_student_and_beta_one_the_retrieved_aggregate() -> None:
    kb = _kb()
    logits, emb = torch.randn(5, 2), torch.randn(5, 8)
    student = combine(logits, emb, kb, RetrievalSettings(beta=0.0, k=4))
    assert torch.equal(student, torch.softmax(logits, -1))
    retrieved = combine(logits, emb, kb, RetrievalSettings(beta=1.0, k=4, tau=0.2))
    torch.testing.assert_close(retrieved, kb.retrieve(emb, 4, 0.2))
    half = combine(logits, emb, kb, RetrievalSettings(beta=0.5, k=4, tau=0.2))
    torch.testing.assert_close(half, 0.5 * student + 0.5 * retrieved)
    assert (half >= 0).all() and torch.allclose(half.sum(-1), torch.ones(5))


def test_exclude_skips_the_query_own_entry() -> None:
    kb = _kb()
    emb = kb.keys[:3].clone()
    own = combine(torch.zeros(3, 2), emb, kb, RetrievalSettings(beta=1.0, k=1))
    torch.testing.assert_close(own, kb.soft_labels[:3])  # k = 1 finds itself
    other = combine(torch.zeros(3, 2), emb, kb, RetrievalSettings(beta=1.0, k=1), exclude=torch.arange(3))
    assert not torch.allclose(other, kb.soft_labels[:3])


def test_saved_predictor_gives_identical_predictions(tmp_path: Path) -> None:
    run = tiny_bert(tmp_path / "run", layers=1, hidden=16)
    kb = _kb(d=16)
    kb.save(run / "kb")
    (run / "config.yaml").write_text(
        "method: {name: reaugkd, beta: 0.3, retrieval_k: 5}\nstudent: {max_length: 12}\n"
    )
    texts = ["a fine film", "dull and long", "great", "awful acting, weak plot"]
    predictor = ReAugPredictor.from_pretrained(run)
    assert (predictor.settings.beta, predictor.settings.k, predictor.max_length) == (0.3, 5, 12)
    probs = predictor.predict_proba(texts, batch_size=3)
    again = ReAugPredictor.from_pretrained(run).predict_proba(texts, batch_size=4)
    np.testing.assert_allclose(probs, again, atol=1e-6)
    assert probs.shape == (4, 2) and np.allclose(probs.sum(-1), 1.0, atol=1e-6)
    plain = predictor.predict_proba(texts, retrieval=False)
    with torch.no_grad():
        enc = predictor.tokenizer(texts, padding=True, return_tensors="pt")
        ref = torch.softmax(predictor.model(**enc).logits, -1).numpy()
    np.testing.assert_allclose(plain, ref, atol=1e-6)
    assert predictor.predict(texts[:1]) in (["negative"], ["positive"])
    assert ReAugPredictor.from_pretrained(run, beta=0.0).predict_proba(texts) == pytest.approx(
        plain, abs=1e-6
    )


def test_predictor_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(KdkitError, match="no saved model"):
        ReAugPredictor.from_pretrained(tmp_path)
    run = tiny_bert(tmp_path / "run", layers=1, hidden=16)
    with pytest.raises(KdkitError, match="no knowledge base"):
        ReAugPredictor.from_pretrained(run)
    _kb(d=8).save(run / "kb")
    with pytest.raises(KdkitError, match="8 dims, the model 16"):
        ReAugPredictor.from_pretrained(run)
