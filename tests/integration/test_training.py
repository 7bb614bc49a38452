"""Training-loop properties through the Python API: gradient accumulation, different tokenizers, schedules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

import kdkit
from tests.conftest import FILL, NEG, POS, tiny_bert, tiny_config


def _no_dropout_teacher(path: Path) -> Path:
    tiny_bert(path, layers=2)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_gradient_accumulation_matches_a_bigger_batch(tiny_csv: Path, tmp_path: Path) -> None:
    teacher = _no_dropout_teacher(tmp_path / "t")
    weights = []
    for name, batch, accum in [("big", 8, 1), ("accum", 4, 2)]:
        raw = tiny_config(teacher, tiny_csv, tmp_path / name)
        raw["student"] = {"layers": [0, 1], "max_length": 16}
        raw["train"] = {
            "max_steps": 3,
            "batch_size": batch,
            "grad_accum": accum,
            "lr": 1e-3,
            "load_best": False,
        }
        kdkit.distill(raw)
        weights.append(load_file(tmp_path / name / "model.safetensors"))
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-5), key


def _word_tokenizer_model(path: Path) -> Path:
    """A tiny student with its own word-level tokenizer (a different vocabulary from the teacher's)."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *POS, *NEG, *FILL])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    return path


def test_teacher_and_student_with_different_tokenizers(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    student = _word_tokenizer_model(tmp_path / "student")
    raw = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run")
    raw["student"] = {"model": str(student), "max_length": 16}
    result = kdkit.distill(raw)
    assert result.metrics["steps"] == 6 and "agreement" in result.metrics["validation"]
    saved = PreTrainedTokenizerFast.from_pretrained(result.output_dir)
    assert saved.vocab_size == len(saved.get_vocab()) < 100  # the student keeps its own tokenizer
    with pytest.raises(kdkit.KdkitError, match="same tokenizer"):
        raw["output_dir"] = str(tmp_path / "run2")
        raw["method"] = {"name": "kd", "hidden_weight": 1.0}
        kdkit.distill(raw)


def test_hidden_state_transfer_and_cosine_schedule(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    raw = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run")
    raw["method"] = {"name": "kd", "hidden_weight": 1.0, "alpha": 0.2}
    raw["train"].update(scheduler="cosine", warmup_ratio=0.5)
    result = kdkit.distill(raw)
    logs = [json.loads(x) for x in (result.output_dir / "logs" / "train.jsonl").read_text().splitlines()]
    lrs = [r["train/lr"] for r in logs if "train/lr" in r]
    assert lrs[0] < lrs[2] and lrs[-1] < lrs[2]  # warmup then decay
    assert all("train/hidden" in r for r in logs if "train/lr" in r)


def test_bf16_mixed_precision_runs_on_cpu(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    raw = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run")
    raw["train"].update(mixed_precision="bf16", max_steps=2)
    result = kdkit.distill(raw)
    assert result.metrics["steps"] == 2
    saved = load_file(result.output_dir / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in saved.values())  # autocast: weights stay fp32
