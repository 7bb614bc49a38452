"""Bad input, one case each: a one-line ``error:`` (what, where, how to fix), exit code 2, no traceback.

Each case goes through ``kdkit.cli.main`` in this process (no subprocess start-up), on the tiny teacher
and data of ``tests/conftest.py``. ``--debug`` is the one way to get the traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from kdkit.cli import main
from tests.conftest import sentiment_rows, tiny_bert, tiny_config, tiny_lm_tokenizer

pytestmark = pytest.mark.integration


def write(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI, expect exit code 2 and one error line; return that line."""
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # no progress bars
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    return errors[0]


@pytest.fixture
def cfg(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> str:
    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run")
    config["train"].update(max_steps=2, eval_every=None, save_every=1)
    return write(tmp_path / "c.yaml", config)


def test_missing_files(cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(capsys, "validate", "--config", cfg, f"data.train={tmp_path}/nope.csv")
    assert "nope.csv' does not exist" in line
    line = fails(capsys, "validate", "--config", cfg, f"teacher.model={tmp_path}/no_model")
    assert "no_model' does not exist" in line
    line = fails(capsys, "distill", "--config", str(tmp_path / "missing.yaml"))
    assert "missing.yaml' does not exist" in line and "kdkit ls" in line


def test_unknown_column_lists_the_columns(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(capsys, "validate", "--config", cfg, "data.text=txt")
    assert "no column 'txt' (data.text)" in line and "did you mean 'text'" in line
    assert "its columns: text, label" in line


def test_label_outside_the_label_set(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(capsys, "validate", "--config", cfg, "data.label_names=[negative,neutral]")
    assert "label 'positive' is not one of the label names (negative, neutral)" in line


def test_empty_dataset_after_filtering(cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("text,label\n" + "".join(f"  ,{y}\n" for _, y in sentiment_rows(8)))
    line = fails(capsys, "validate", "--config", cfg, f"data.train={path}")
    assert "blank.csv: every row has an empty text in column 'text'" in line


def test_empty_causal_lm_dataset_after_filtering(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text("".join(json.dumps({"prompt": "question ?", "output": " "}) + "\n" for _ in range(4)))
    config = {"task": "causal_lm", "output_dir": str(tmp_path / "lm"), "teacher": {"model": str(tiny_lm)}}
    config["method"] = {"name": "forward_kl"}
    config["data"] = {"train": str(path), "validation": str(path)}
    line = fails(capsys, "validate", "--config", write(tmp_path / "lm.yaml", config))
    assert "blank.jsonl" in line and "empty" in line


def test_teacher_and_student_with_different_label_counts(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    three = tiny_bert(tmp_path / "three", layers=2, num_labels=3)
    line = fails(capsys, "validate", "--config", cfg, f"student.model={three}")
    assert "trained with 3 labels but the data has 2" in line
    line = fails(capsys, "distill", "--config", cfg, f"teacher.model={three}")
    assert "trained with 3 labels but the data has 2" in line


def test_causal_lm_with_different_vocabularies(
    tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tiny_lm_tokenizer(tmp_path / "other_tok")
    vocab = json.loads((other / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["zebra"] = len(vocab["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    config = {
        "task": "causal_lm",
        "output_dir": str(tmp_path / "lm"),
        "teacher": {"model": str(tiny_lm), "tokenizer": str(other)},
        "student": {"num_layers": 2},
        "data": {"train": str(tiny_jsonl), "split": {"validation": 0.25}},
        "method": {"name": "atkd"},  # another tokenizer: the cross-tokenizer methods only
        "train": {"max_steps": 1, "batch_size": 4},
    }
    line = fails(capsys, "distill", "--config", write(tmp_path / "lm.yaml", config))
    assert "method 'atkd' needs the teacher's and the student's tokenizers to be the same" in line
    # generation after training needs room for a prompt: refused before training, not after it
    config["method"] = {"name": "forward_kl"}
    config["eval"] = {"max_new_tokens": 127}
    line = fails(capsys, "distill", "--config", write(tmp_path / "lm.yaml", config))
    assert "eval.max_new_tokens (127) leaves 1 of student.max_length (128) tokens" in line
    assert not (tmp_path / "lm" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method.name=mixkdd", "unknown method 'mixkdd' (did you mean 'mixkd'?)"),
        (
            "teacher.model=minilm-l7",
            "unknown model 'minilm-l7': not a named asset (did you mean 'minilm-l6'?)",
        ),
        ("train.batchsize=3", "config key 'train.batchsize' is unknown (did you mean 'batch_size'?)"),
        ("method.temprature=2", "config key 'method.temprature' is unknown (did you mean 'temperature'?)"),
        ("data.train=tweetz", "tweetz"),
    ],
)
def test_unknown_names_say_did_you_mean(
    cfg: str, override: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in fails(capsys, "validate", "--config", cfg, override)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr=abc", "config key 'train.lr' must be a number, got 'abc'"),
        ("train.batch_size=0", "config key 'train.batch_size' must be > 0, got 0"),
        ("train.warmup_ratio=1.5", "config key 'train.warmup_ratio' must be in [0, 1), got 1.5"),
        ("method.temperature=-1", "config key 'method.temperature' must be > 0"),
        ("train.mixed_precision=fp8", "config key 'train.mixed_precision' must be one of no, fp16, bf16"),
        ("eval.metrics=[acc]", "metric 'acc' does not apply to classification (did you mean 'accuracy'?)"),
        ("student.layers=first", "config key 'student.layers' must be a list"),
    ],
)
def test_wrong_type_or_out_of_range(
    cfg: str, override: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in fails(capsys, "validate", "--config", cfg, override)


def test_a_bad_metric_fails_before_training(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = fails(capsys, "finetune", "--which", "student", "--config", cfg, "train.best_metric=acc")
    assert "metric 'acc' does not apply to classification (did you mean 'accuracy'?)" in line
    assert not (tmp_path / "run").exists()  # refused before the output dir, the models and the training


def test_output_dir_with_a_different_run_is_refused(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "--which", "student", "--config", cfg]) == 0
    capsys.readouterr()
    line = fails(capsys, "finetune", "--which", "student", "--config", cfg, "train.lr=0.01")
    assert "already holds a run" in line and "--overwrite" in line
    line = fails(capsys, "finetune", "--which", "student", "--config", cfg, "train.lr=0.01", "--resume")
    assert "holds a run with a different config" in line
    assert main(["finetune", "--which", "student", "--config", cfg, "train.lr=0.01", "--overwrite"]) == 0


def test_a_run_that_failed_before_training_can_be_retried(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    three = tiny_bert(tmp_path / "three", layers=2, num_labels=3)
    fails(capsys, "finetune", "--which", "student", "--config", cfg, f"student.model={three}")
    assert (tmp_path / "run" / "config.yaml").is_file()  # the failed run got as far as its output dir
    assert main(["finetune", "--which", "student", "--config", cfg]) == 0  # no --overwrite needed


def test_truncated_sequences_are_counted_and_reported(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "--which", "student", "--config", cfg, "student.max_length=4"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    warning = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    train = metrics["truncated"]["train"]
    assert train == 72  # every tiny sentence is 5 words + [CLS]/[SEP] > 4 tokens
    assert any(f"{train} of 72 train examples are longer than student.max_length=4" in w for w in warning)


def test_out_of_memory_names_the_knobs(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdkit.train.loop as loop
    from kdkit.train.checkpoint import TrainerState

    real = loop._accumulate

    def accumulate(*args: object, **kwargs: object) -> object:
        state = next(a for a in args if isinstance(a, TrainerState))
        if state.step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_accumulate", accumulate)
    line = fails(capsys, "finetune", "--which", "student", "--config", cfg)
    assert "out of memory in `kdkit finetune` (CUDA out of memory. Tried to allocate 20.00 GiB)" in line
    assert "train.batch_size" in line and "train.grad_accum" in line and "--resume" in line
    assert (tmp_path / "run" / "checkpoints" / "step-1").is_dir()  # the work before it is kept


def test_debug_shows_the_traceback(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--debug", "validate", "--config", cfg, "data.text=txt"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "no column 'txt'" in err
