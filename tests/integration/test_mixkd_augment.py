"""MixKD augmentation: teacher-labelled texts from a file or from a (tiny, local) seq2seq model join the
training pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.config import DataConfig
from kdkit.data.augment import read_texts, teacher_labelled
from kdkit.data.task_data import Split
from kdkit.errors import KdkitError
from kdkit.models.paraphrase import generate_texts
from kdkit.train.run import distill
from tests.conftest import sentiment_rows, tiny_config, tiny_lm_tokenizer


def tiny_seq2seq(path: Path) -> Path:
    """A tiny random BART with the word-level tokenizer of the LM fixtures (a stand-in paraphraser)."""
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    tiny_lm_tokenizer(path)
    n = len(AutoTokenizer.from_pretrained(path))
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=n,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    BartForConditionalGeneration(config).save_pretrained(path)
    return path


def test_read_texts_and_teacher_labels(tmp_path: Path) -> None:
    path = tmp_path / "para.csv"
    path.write_text("text,other\na lovely film,1\n,2\nan awful plot,3\n")
    texts, pairs = read_texts(str(path), DataConfig())
    assert texts == ["a lovely film", "an awful plot"] and pairs is None
    with pytest.raises(KdkitError, match="no column 'sentence'"):
        read_texts(str(path), DataConfig(text="sentence"))
    split = teacher_labelled(texts, None, lambda s: np.array([[0.1, 0.9], [2.0, -1.0]]), "classification")
    assert split.labels.tolist() == [1, 0]
    reg = teacher_labelled(texts, None, lambda s: np.array([[0.5], [-1.5]]), "regression")
    assert reg.labels.dtype == np.float32 and reg.labels.tolist() == [0.5, -1.5]
    assert isinstance(split, Split)


def test_generate_texts_is_seeded(tmp_path: Path) -> None:
    model = tiny_seq2seq(tmp_path / "bart")
    texts = ["what is one", "the movie was good"]
    a = generate_texts(str(model), texts, per_example=2, max_new_tokens=5, seed=3)
    b = generate_texts(str(model), texts, per_example=2, max_new_tokens=5, seed=3)
    assert len(a) == 4 and a == b


@pytest.mark.parametrize("source", ["file", "model"])
def test_distill_with_augmentation(source: str, tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    method: dict = {"name": "mixkd"}
    if source == "file":
        path = tmp_path / "para.csv"
        path.write_text("text\n" + "\n".join(t for t, _ in sentiment_rows(20, seed=5)) + "\n")
        method["augment_file"] = str(path)
        expected = 20
    else:
        method["augment_model"] = str(tiny_seq2seq(tmp_path / "bart"))
        method["augment_max_new_tokens"] = 6
        expected = 72  # one rewrite per training example (96 rows, 25% held out)
    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run", method=method)
    config["train"]["max_steps"] = 2
    result = distill(config, overwrite=True)
    assert result.metrics["augmented"] == expected
