"""Shared fixtures: tiny BERT models built from configs (seconds, not minutes) and tiny datasets."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from kdkit.assets import asset_path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

POS = ["good", "great", "lovely", "fine", "happy", "superb", "nice", "brilliant"]
NEG = ["bad", "awful", "poor", "sad", "horrible", "boring", "ugly", "terrible"]
FILL = ["the", "movie", "was", "a", "plot", "really", "very", "film", "and", "so"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test caches fine-tuned teachers in its own KDKIT_HOME; no hub access."""
    monkeypatch.setenv("KDKIT_HOME", str(tmp_path_factory.mktemp("kdkit_home")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def tiny_bert(path: Path, layers: int, hidden: int = 32, num_labels: int = 2, seed: int = 0) -> Path:
    """Save a tiny BERT sequence classifier (MiniLM's uncased vocab) at ``path``."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        num_labels=num_labels,
        id2label={i: n for i, n in enumerate(["negative", "positive", "neutral"][:num_labels])},
        label2id={n: i for i, n in enumerate(["negative", "positive", "neutral"][:num_labels])},
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(asset_path("minilm-l6")).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer, 32-wide BERT classifier with a 'trained' head (saved as ForSequenceClassification)."""
    return tiny_bert(tmp_path_factory.mktemp("tiny_teacher"), layers=4)


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        words = [rng.choice(POS if label == "positive" else NEG), *rng.sample(FILL, 4)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 96-row binary sentiment csv (text,label) with string labels."""
    path = tmp_path_factory.mktemp("data") / "train.csv"
    lines = ["text,label"] + [f"{t},{y}" for t, y in sentiment_rows(96)]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_config(teacher: Path, data: Path, out: Path, **extra: object) -> dict:
    """A complete run config for the tiny teacher and data; ``extra`` replaces top-level sections."""
    config = {
        "task": "classification",
        "output_dir": str(out),
        "teacher": {"model": str(teacher), "max_length": 16},
        "student": {"layers": [0, 3], "max_length": 16},
        "data": {"train": str(data), "label_names": ["negative", "positive"], "split": {"validation": 0.25}},
        "method": {"name": "kd"},
        "train": {
            "max_steps": 6,
            "batch_size": 8,
            "lr": 1e-3,
            "log_every": 1,
            "eval_every": 3,
            "save_every": 2,
        },
        "eval": {"batch_size": 32, "splits": ["validation"]},
    }
    config.update(extra)
    return config
