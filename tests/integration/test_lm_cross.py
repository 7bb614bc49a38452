"""Cross-tokenizer distillation end to end on two tiny random Llamas with different tokenizers (a word-level
teacher, a character-level student): ULD, the hybrid, every data source, resume, `kdkit validate`, and the
pairs that are refused in one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from kdkit.errors import KdkitError
from kdkit.train.run import distill
from tests.conftest import tiny_char_llama
from tests.integration.test_cli_tiny import kdkit, write_config
from tests.integration.test_lm_tiny import lm_config


@pytest.fixture(scope="module")
def char_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_char_llama(tmp_path_factory.mktemp("char_lm"))


def cross_config(teacher: Path, student: Path, data: Path, out: Path, **method: Any) -> dict[str, Any]:
    config = lm_config(teacher, data, out, method={"name": "uld", "chunk_size": 16, **method})
    config["student"] = {"model": str(student), "max_length": 96}
    config["data"]["chat_template"] = True
    return config


def test_uld_through_the_cli_then_eval_and_validate(
    tiny_lm: Path, char_student: Path, tiny_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", cross_config(tiny_lm, char_student, tiny_jsonl, out))
    proc = kdkit("validate", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "tokenizers: different" in proc.stdout and "vocabulary entries match" in proc.stdout
    proc = kdkit("distill", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lie in aligned spans" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "uld" and metrics["steps"] == 4
    # each model scored with its own tokenizer: bits per byte compares them, perplexity does not
    student, teacher = metrics["validation"], metrics["teacher"]["validation"]
    assert student["bits_per_byte"] > 0 and teacher["bits_per_byte"] > 0
    logs = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert any(r.get("train/uld", 0) > 0 for r in logs) and any("train/ce" in r for r in logs)
    model = AutoModelForCausalLM.from_pretrained(out)  # the student keeps its own (character) vocabulary
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(char_student).config.vocab_size
    proc = kdkit("eval", "--model", str(out), "--config", str(cfg), "--output", str(tmp_path / "m.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "m.json").read_text())["validation"]
    assert again["bits_per_byte"] == pytest.approx(student["bits_per_byte"], rel=1e-4)


@pytest.mark.parametrize(
    ("method", "generation", "parts"),
    [
        ({"hybrid": True, "skip_eos": True, "top_k": 8}, {}, {"uld", "matched"}),
        ({"name": "forward_kl"}, {"source": "teacher"}, {"uld", "matched"}),  # SeqKD data + the hybrid
        ({"name": "jsd"}, {"on_policy": 1.0}, {"uld", "matched"}),  # student samples, re-tokenized
    ],
)
def test_hybrid_and_every_data_source(
    tiny_lm: Path,
    char_student: Path,
    tiny_jsonl: Path,
    tmp_path: Path,
    method: dict[str, Any],
    generation: dict[str, Any],
    parts: set[str],
) -> None:
    config = cross_config(tiny_lm, char_student, tiny_jsonl, tmp_path / "run", **method)
    config["generation"].update(generation)
    config["eval"] = {"splits": [], "rouge": False}
    result = distill(config, overwrite=True)
    logs = [
        json.loads(line) for line in (result.output_dir / "logs" / "train.jsonl").read_text().splitlines()
    ]
    seen = {k.removeprefix("train/") for r in logs for k in r}
    assert parts <= seen
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in logs if "train/loss" in r)
    if generation.get("source") == "teacher":  # generated with the teacher's own tokenizer, kept as text
        rows = [
            json.loads(x) for x in (result.output_dir / "teacher_generations.jsonl").read_text().splitlines()
        ]
        assert len(rows) == 48 and all(isinstance(r["response"], str) for r in rows)


def test_resume_gives_the_same_student(
    tiny_lm: Path, char_student: Path, tiny_jsonl: Path, tmp_path: Path
) -> None:
    config = cross_config(tiny_lm, char_student, tiny_jsonl, tmp_path / "straight", hybrid=True)
    config["eval"] = {"splits": [], "rouge": False}
    config["train"]["load_best"] = False
    straight = distill(config, overwrite=True).output_dir
    config["output_dir"] = str(tmp_path / "halves")
    assert distill(config, overwrite=True, stop_after=2).metrics == {"stopped_at_step": 2}
    halves = distill(config, resume=True).output_dir
    a = AutoModelForCausalLM.from_pretrained(straight).state_dict()
    b = AutoModelForCausalLM.from_pretrained(halves).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hybrid", [False, True])
def test_the_teacher_cache_gives_the_live_run(
    tiny_lm: Path, char_student: Path, tiny_jsonl: Path, tmp_path: Path, hybrid: bool
) -> None:
    """`kdkit cache` keeps the teacher's top-k at its own positions; distilling from it gives the run that the
    live teacher gives with method.top_k = cache.top_k (ULD), or, for the hybrid, with every teacher token
    cached (k = its vocabulary) the live exact hybrid (float32 cache: the same losses to rounding)."""
    from transformers import AutoTokenizer

    from kdkit.cli import main

    k = len(AutoTokenizer.from_pretrained(tiny_lm)) if hybrid else 8
    method = {"hybrid": True} if hybrid else {"top_k": 8, "skip_eos": True}
    config = cross_config(tiny_lm, char_student, tiny_jsonl, tmp_path / "live", **method)
    config["eval"] = {"splits": [], "rouge": False}
    config["train"]["load_best"] = False
    live = distill(config, overwrite=True).output_dir
    config["output_dir"] = str(tmp_path / "cached")
    config["method"].pop("top_k", None)  # null: all k the cache holds
    config["cache"] = {"dir": str(tmp_path / "cache"), "top_k": k, "dtype": "float32", "shard_size": 20}
    cfg = write_config(tmp_path / "c.yaml", config)
    assert main(["cache", "--config", str(cfg)]) == 0
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["provenance"]["positions"] == "teacher" and meta["provenance"]["student_tokenizer"]
    cached = distill(config).output_dir
    if hybrid:
        assert "matched" in (cached / "logs" / "train.jsonl").read_text()
    logs = [
        [json.loads(line) for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
        for run in (live, cached)
    ]
    losses = [[r["train/uld"] for r in log if "train/uld" in r] for log in logs]
    assert len(losses[0]) == len(losses[1]) > 0
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    a = AutoModelForCausalLM.from_pretrained(live).state_dict()
    b = AutoModelForCausalLM.from_pretrained(cached).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # another student tokenizer than the cache was built for is refused by fingerprint
    config["student"] = {"num_layers": 1, "max_length": 96}  # cut from the teacher: its tokenizer
    config["output_dir"] = str(tmp_path / "other")
    with pytest.raises(KdkitError, match="does not match this run"):
        distill(config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": {"name": "atkd"}}, "method 'atkd' needs the teacher's and the student's tokenizers"),
        ({"teacher_chat": None}, "the teacher's tokenizer .* has no chat template"),
        ({"data": {"train_on_prompt": True}}, "data.train_on_prompt is true, but span losses"),
    ],
)
def test_pairs_that_cannot_run_are_refused_in_one_line(
    tiny_lm: Path, char_student: Path, tiny_jsonl: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    teacher = tiny_lm
    config = cross_config(teacher, char_student, tiny_jsonl, tmp_path / "run")
    if "teacher_chat" in change:  # a teacher whose tokenizer has no chat template
        teacher = Path(shutil.copytree(tiny_lm, tmp_path / "teacher"))
        tok_config = json.loads((teacher / "tokenizer_config.json").read_text())
        tok_config.pop("chat_template", None)
        (teacher / "tokenizer_config.json").write_text(json.dumps(tok_config))
        (teacher / "chat_template.jinja").unlink(missing_ok=True)
        config["teacher"]["model"] = str(teacher)
    elif "data" in change:
        config["data"].update(change["data"])
    else:
        config.update(change)
    cfg = write_config(tmp_path / "c.yaml", config)
    proc = kdkit("distill", "--config", str(cfg))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr
    assert re.search(message, lines[-1]), lines[-1]
    with pytest.raises(KdkitError):  # the Python API raises the same error
        distill(config, overwrite=True)
