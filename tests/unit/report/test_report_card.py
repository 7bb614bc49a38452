"""The model card (README.md) of a run: front matter, method and paper, metrics, command, versions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdkit.methods import METHODS
from kdkit.report import card
from tests.unit.report.helpers import fake_run

METRICS = {
    "kind": "distill",
    "method": "kd",
    "parameters": 15_600_000,
    "steps": 300,
    "best_step": 250,
    "validation": {"accuracy": 0.812345, "agreement": 0.9},
    "teacher": {"validation": {"accuracy": 0.9012}},
    "teacher_parameters": 22_713_216,
}


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_has_front_matter_method_paper_metrics_and_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(card, "COMMAND", None)
    out = fake_run(tmp_path / "student-kd", METRICS, teacher="minilm-l6", data={"train": "tweets"})
    path = card.write_model_card(out, METRICS)
    assert path == out / "README.md"
    text = path.read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "transformers"
    assert {"kdkit", "knowledge-distillation"} <= set(meta["tags"])
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"  # the asset's hub id
    assert meta["pipeline_tag"] == "text-classification"
    assert "Distilling the Knowledge in a Neural Network" in text and "Hinton" in text
    assert "`minilm-l6`" in text and "22,713,216 parameters" in text and "15,600,000 parameters" in text
    assert "| this model | validation | 0.8123 | 0.9000 |" in text
    assert "| teacher | validation | 0.9012 | - |" in text
    assert "train: tweets" in text and "prompt_template" not in text  # the data section, classifier fields
    assert "Python API: kdkit.distill(...)" in text
    for software in ("python", "kdkit", "torch", "transformers", "accelerate"):
        assert f"- {software} " in text


def test_card_records_the_cli_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(card, "COMMAND", None)
    card.record_command(["finetune", "--config", "my config.yaml", "--which", "student"])
    metrics = {**METRICS, "kind": "finetune", "method": "finetune", "which": "student"}
    metrics.pop("teacher")
    out = fake_run(tmp_path / "nokd", metrics, teacher="./local/teacher")
    text = card.write_model_card(out, metrics).read_text()
    assert "kdkit finetune --config 'my config.yaml' --which student" in text
    assert "base_model" not in front_matter(text)  # a local path is no hub id
    assert "none: fine-tuning" in text


def test_causal_lm_card_and_every_method_has_a_paper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(card, "COMMAND", None)
    metrics = {**METRICS, "method": "atkd", "validation": {"perplexity": 566.21, "rouge_l": 2.65}}
    metrics.pop("teacher")
    out = fake_run(
        tmp_path / "atkd", metrics, teacher="smollm2-135m", task="causal_lm", method={"name": "atkd"}
    )
    text = card.write_model_card(out, metrics).read_text()
    meta = front_matter(text)
    assert meta["pipeline_tag"] == "text-generation" and "atkd" in meta["tags"]
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # the packaged teacher is a dequantized 4-bit GGUF: the card says so beside base_model
    assert "Q4_1-quantized GGUF of HuggingFaceTB/SmolLM2-135M-Instruct, dequantized to float32" in text
    assert "Revisiting Knowledge Distillation for Autoregressive Language Models" in text
    assert "| this model | validation | 566.2100 | 2.6500 |" in text
    for name in METHODS:
        paper = METHODS.get(name).paper
        assert isinstance(paper, str) and any(str(y) in paper for y in range(2014, 2026)), name


def test_no_config_no_card(tmp_path: Path) -> None:
    assert card.write_model_card(tmp_path, METRICS) is None
    assert not (tmp_path / "README.md").exists()
