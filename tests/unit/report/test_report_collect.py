"""Reading run dirs for `kdkit report`: curves of train.jsonl (resumed runs log steps twice) and the
one-line errors for dirs that are not finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit.cli import main
from kdkit.errors import KdkitError
from kdkit.report.collect import read_curves, read_run, read_runs
from tests.unit.report.helpers import fake_run

METRICS = {"kind": "distill", "method": "kd", "parameters": 10, "validation": {"accuracy": 0.5}}


def test_curves_keep_the_last_record_per_step_and_key(tmp_path: Path) -> None:
    log = tmp_path / "train.jsonl"
    records = [
        {"step": 1, "time": 1.0, "train/loss": 1.0, "train/lr": 0.1},
        {"step": 2, "train/loss": 0.9},
        {"step": 3, "train/loss": 0.8},  # lost to a crash, then resumed from step 2
        {"step": 2, "eval/accuracy": 0.6},
        {"step": 3, "train/loss": 0.7},
        {"step": 4, "train/loss": 0.6, "eval/accuracy": 0.7, "note": "x", "train/flag": True},
    ]
    lines = [json.dumps(r) for r in records] + ['{"step": 5, "train/lo']  # a line cut by a crash
    log.write_text("\n".join(lines) + "\n")
    curves = read_curves(log)
    assert curves["train/loss"] == {1: 1.0, 2: 0.9, 3: 0.7, 4: 0.6}
    assert curves["eval/accuracy"] == {2: 0.6, 4: 0.7}
    assert curves["train/lr"] == {1: 0.1}
    assert set(curves) == {"train/loss", "train/lr", "eval/accuracy"}  # no time, text or booleans
    assert list(curves["train/loss"]) == [1, 2, 3, 4]  # sorted by step
    assert read_curves(tmp_path / "missing.jsonl") == {}


def test_a_run_dir_is_read_with_its_splits_and_metrics(tmp_path: Path) -> None:
    metrics = {**METRICS, "test": {"accuracy": 0.4}, "teacher": {"validation": {"accuracy": 0.9}}}
    run = read_run(fake_run(tmp_path / "kd", metrics, logs=[{"step": 1, "train/loss": 2.0}]))
    assert run.kind == "distill" and run.method == "kd" and run.which == "student"
    assert run.main_metric == "accuracy" and run.eval_splits() == ["validation", "test"]
    assert run.curves == {"train/loss": {1: 2.0}}
    lm = read_run(fake_run(tmp_path / "lm", {**METRICS, "validation": {"perplexity": 3.0}}, task="causal_lm"))
    assert lm.quality_metrics() == ["perplexity", "bits_per_byte", "rouge_l"] and lm.eval_splits() == [
        "validation"
    ]


def test_runs_with_the_same_dir_name_get_longer_names(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a" / "student", METRICS)
    b = fake_run(tmp_path / "b" / "student", METRICS)
    assert [r.name for r in read_runs([a, b])] == ["a/student", "b/student"]
    with pytest.raises(KdkitError, match="given twice"):
        read_runs([a, a])


def test_bad_run_dirs_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(KdkitError, match=r"run dir '.*nope' does not exist; pass the output_dir"):
        read_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdkitError, match=r"not a kdkit run dir \(no config\.yaml\)"):
        read_run(tmp_path / "empty")
    unfinished = fake_run(tmp_path / "unfinished", METRICS)
    (unfinished / "metrics.json").unlink()
    (unfinished / "checkpoints" / "step-3").mkdir(parents=True)
    with pytest.raises(
        KdkitError, match=r"unfinished \(no metrics\.json, last checkpoint at step 3\).*--resume"
    ):
        read_run(unfinished)
    broken = fake_run(tmp_path / "broken", METRICS)
    (broken / "metrics.json").write_text('{"kind": ')
    with pytest.raises(KdkitError, match=r"metrics\.json is not valid JSON"):
        read_run(broken)
    (broken / "metrics.json").write_text("[1, 2]")
    with pytest.raises(KdkitError, match=r"has no 'parameters'"):
        read_run(broken)


def test_the_cli_prints_the_error_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unfinished = fake_run(tmp_path / "run", METRICS)
    (unfinished / "metrics.json").unlink()
    assert main(["report", str(unfinished), "--no-latency", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run ") and "unfinished" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "out" / "report.html").exists()
