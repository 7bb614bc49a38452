"""The real cross-tokenizer pair: the packaged Gemma-3-270M teacher (SentencePiece, 262,144 tokens) and a
student cut from SmolLM2-135M (byte-level BPE, 49,152 tokens) on dolly. Converting the Gemma GGUF takes
about 2 minutes on 2 cores (once per machine, cached under $KDKIT_HOME), so this is marked slow
(`make test-slow`); the tiny-Llama tests in test_lm_cross.py cover the same code paths on every run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit.align import vocabulary_matches
from kdkit.assets import asset_path
from kdkit.config import load_config
from kdkit.data.lm import load_lm_data
from kdkit.data.lm_cross import encode_cross
from kdkit.models import load_tokenizer, with_pad_token
from kdkit.train.run import distill
from kdkit.validate import validate
from tests.conftest import SHARED_DATA

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "dolly_smol10l_from_gemma270m_uld.yaml"


@pytest.mark.slow
def test_gemma_teacher_smollm2_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDKIT_DATA_ROOT", str(SHARED_DATA))
    overrides = [
        f"output_dir={tmp_path / 'run'}", "student.num_layers=2", "student.max_length=96",
        "teacher.max_length=96", "train.max_steps=2", "train.batch_size=2", "train.save_every=null",
        "data.max_eval_samples=4", "eval.max_new_tokens=8", "method.top_k=256",
    ]  # fmt: skip
    config = load_config(RECIPE, overrides)
    for asset in ("smollm2-135m", "gemma3-270m"):  # validate compares converted tokenizers only
        asset_path(asset)
    lines = validate(config)
    assert any("tokenizers: different" in line and "45,592" in line for line in lines), lines
    student = with_pad_token(load_tokenizer("smollm2-135m"))
    teacher = with_pad_token(load_tokenizer("gemma3-270m"))
    assert len(vocabulary_matches(student, teacher)[0]) == 45_592
    split = load_lm_data(config.data).split("validation")
    enc = encode_cross(split, student, teacher, 256, 256)
    assert enc.coverage > 0.99  # nearly every student response token lies in an aligned span
    result = distill(config)
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2
    student_scores, teacher_scores = metrics["validation"], metrics["teacher"]["validation"]
    assert 0 < teacher_scores["bits_per_byte"] < student_scores["bits_per_byte"]
