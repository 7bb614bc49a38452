"""ReAugKD's inference settings chosen on validation (``method.beta: auto``): against a plain grid search
through ``combine``, the student alone kept when retrieval only hurts, retrieval taken when it helps."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from kdkit.errors import KdkitError
from kdkit.eval.metrics import compute_metrics
from kdkit.methods.reaugkd import ReAugKDConfig
from kdkit.retrieval.choose import BETAS, KS, TAUS, choose_settings
from kdkit.retrieval.kb import KnowledgeBase
from kdkit.retrieval.predictor import RetrievalSettings, combine


def _data(n: int = 120, kb_size: int = 80, d: int = 8, seed: int = 0) -> tuple:
    """A KB whose soft labels follow a hidden linear rule, queries near KB keys, a noisy student."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    keys = torch.nn.functional.normalize(torch.randn(kb_size, d, generator=g), dim=-1)
    soft = torch.softmax(torch.stack([keys @ w, -(keys @ w)], -1) * 3, -1)
    kb = KnowledgeBase(keys, soft, torch.eye(d))
    queries = keys[torch.randint(0, kb_size, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    labels = (queries @ w < 0).long()
    logits = torch.randn(n, 2, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, 2)
    return logits, queries, labels, kb


def _accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return compute_metrics("classification", probs.argmax(-1).numpy(), labels.numpy(), ["accuracy"])[
        "accuracy"
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_choice_is_the_best_of_a_plain_grid_search(seed: int) -> None:
    logits, queries, labels, kb = _data(seed=seed)
    choice = choose_settings(logits, queries, labels, kb, "classification", "accuracy", confidence=0.0)
    grid = {
        (b, k, t): _accuracy(combine(logits, queries, kb, RetrievalSettings(b, k, t)), labels)
        for b, k, t in itertools.product(BETAS, KS, TAUS)
    }
    assert choice.value == pytest.approx(max(grid.values()))
    assert grid[(choice.beta, choice.k, choice.tau)] == pytest.approx(choice.value)
    assert choice.student_alone == pytest.approx(grid[(0.0, 16, 0.1)])
    assert choice.value >= choice.student_alone  # beta 0 is in the grid: never worse on validation
    smallest = min(b for (b, _, _), v in grid.items() if v == pytest.approx(choice.value))
    assert choice.beta == smallest  # ties go to the smaller beta
    # with the default confidence, either the same settings (with their support) or the student alone
    # with the grid's best recorded as declined
    kept = choose_settings(logits, queries, labels, kb, "classification", "accuracy")
    if kept.declined is None:
        assert (kept.beta, kept.k, kept.tau, kept.value) == (choice.beta, choice.k, choice.tau, choice.value)
        assert choice.beta == 0 or kept.support >= 0.95
    else:
        assert kept.declined == {"beta": choice.beta, "k": choice.k, "tau": choice.tau, "value": choice.value}
        assert kept.beta == 0 and kept.value == kept.student_alone and kept.support < 0.95


def test_a_gain_of_one_example_is_declined_unless_asked_for() -> None:
    # a student right on all but one example, a KB that holds each query's own label: retrieval fixes that
    # one example and changes nothing else, a gain that a resample shows only when it draws the example
    logits, queries, labels, kb = _data()
    logits = 5.0 * torch.nn.functional.one_hot(labels, 2).float()
    logits[0] = logits[0].flip(-1)
    exact = KnowledgeBase(
        torch.nn.functional.normalize(queries, dim=-1),
        torch.nn.functional.one_hot(labels, 2).float(),
        kb.projection,
    )
    n = len(labels)
    expected = 1 - (1 - 1 / n) ** n  # about 0.63
    choice = choose_settings(logits, queries, labels, exact, "classification", "accuracy")
    assert choice.beta == 0 and choice.value == choice.student_alone == 1 - 1 / n
    assert choice.declined is not None and choice.declined["value"] == 1.0 and choice.declined["beta"] > 0
    assert choice.support == pytest.approx(expected, abs=0.06)
    assert "beta 0 (the student alone)" in choice.describe() and "method.beta_confidence" in choice.describe()
    assert choice.as_dict()["declined"] == choice.declined
    taken = choose_settings(logits, queries, labels, exact, "classification", "accuracy", confidence=0.5)
    assert (
        taken.beta > 0 and taken.value == 1.0 and taken.declined is None and taken.support == choice.support
    )
    assert f"better on {taken.support:.1%}" in taken.describe()


def test_retrieval_that_only_hurts_keeps_the_student_alone() -> None:
    logits, queries, labels, kb = _data()
    logits = 5.0 * torch.nn.functional.one_hot(labels, 2).float()  # a perfect student
    wrong = KnowledgeBase(
        kb.keys, kb.soft_labels.flip(-1), kb.projection
    )  # every neighbour says the opposite
    choice = choose_settings(logits, queries, labels, wrong, "classification", "accuracy")
    assert (choice.beta, choice.k, choice.tau) == (
        0.0,
        16,
        0.1,
    ) and choice.value == choice.student_alone == 1.0
    assert choice.support is None and choice.declined is None  # nothing beat the student: no bootstrap
    assert "no setting beat the student alone" in choice.describe()


def test_retrieval_that_helps_is_taken() -> None:
    logits, queries, labels, kb = _data()
    exact = KnowledgeBase(
        torch.nn.functional.normalize(queries, dim=-1),
        torch.nn.functional.one_hot(labels, 2).float(),
        kb.projection,
    )  # each query's own label stored under its own key
    choice = choose_settings(torch.zeros_like(logits), queries, labels, exact, "classification", "accuracy")
    assert choice.beta > 0 and choice.value == 1.0 and choice.student_alone < 1.0
    assert choice.support is not None and choice.support >= 0.95 and choice.declined is None
    assert "chosen on validation by accuracy" in choice.describe()


def test_a_small_kb_caps_k_and_an_empty_split_is_named() -> None:
    logits, queries, labels, kb = _data(kb_size=6)
    assert choose_settings(logits, queries, labels, kb, "classification", "accuracy").k <= 6
    with pytest.raises(KdkitError, match="non-empty validation split"):
        choose_settings(logits[:0], queries[:0], labels[:0], kb, "classification", "accuracy")


def test_auto_is_the_default_and_needs_a_choice(tmp_path: Path) -> None:
    config = ReAugKDConfig()
    assert config.beta == "auto"
    with pytest.raises(KdkitError, match="no settings were chosen"):
        RetrievalSettings.of_method(config)
    chosen = {"beta": 0.3, "k": 8, "tau": 0.05}
    assert RetrievalSettings.of_method(config, chosen) == RetrievalSettings(0.3, 8, 0.05, "cls")
    (tmp_path / "config.yaml").write_text("method: {name: reaugkd}\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"inference_settings": chosen}))
    assert RetrievalSettings.of_run(tmp_path) == RetrievalSettings(0.3, 8, 0.05, "cls")
    assert RetrievalSettings.of_method(ReAugKDConfig(beta=0.7), chosen).beta == 0.7  # a fixed beta wins
    with pytest.raises(KdkitError, match=r"must be in \[0, 1\] or auto"):
        ReAugKDConfig(beta=1.5)
    assert ReAugKDConfig().beta_confidence == 0.95
    with pytest.raises(KdkitError, match=r"'method.beta_confidence' must be in \[0, 1\]"):
        ReAugKDConfig(beta_confidence=1.5)
