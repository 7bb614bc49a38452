"""The `kdkit` CLI end to end on a tiny teacher and tiny data, in temp dirs (seconds per run)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import tiny_config


def kdkit(*args: str, cwd: Path | None = None, process: bool = False) -> subprocess.CompletedProcess[str]:
    """``kdkit ARGS``: through ``kdkit.cli.main`` in this process (what it prints captured), or with
    ``process=True`` in a new Python process (``python -m kdkit.cli``, as a user runs it; a few seconds of
    start-up each)."""
    if process:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        return subprocess.run(
            [sys.executable, "-m", "kdkit.cli", *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=600,
        )
    from kdkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    except SystemExit as exit_:  # argparse: --help, usage errors
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["kdkit", *args], code, out.getvalue(), err.getvalue())


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_distill_through_cli(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tiny_teacher, tiny_csv, out))
    proc = kdkit("distill", "--config", str(cfg), "train.max_steps=4", process=True)  # as a user runs it
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "kd" and metrics["steps"] == 4
    assert json.loads(proc.stdout)["output_dir"] == str(out)  # stdout: the result alone
    assert 0.0 <= metrics["validation"]["accuracy"] <= 1.0 and "agreement" in metrics["validation"]
    assert "validation" in metrics["teacher"]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 4 and resolved["method"]["temperature"] == 2.0
    logs = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in logs) and any("eval/accuracy" in r for r in logs)
    assert any((out / "logs" / "tb").iterdir())

    from transformers import pipeline

    clf = pipeline("text-classification", model=str(out), device="cpu")
    pred = clf("a great and lovely film")[0]
    assert pred["label"] in {"negative", "positive"}
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).num_hidden_layers == 2

    proc = kdkit("eval", "--model", str(out), "--config", str(cfg), "--output", str(tmp_path / "m.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "m.json").read_text())
    assert evaluated["validation"]["accuracy"] == pytest.approx(metrics["validation"]["accuracy"])


def test_finetune_student_baseline_and_teacher(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tiny_teacher, tiny_csv, tmp_path / "base"))
    proc = kdkit("finetune", "--config", str(cfg), "--which", "student", "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert metrics["method"] == "finetune" and "teacher" not in metrics
    proc = kdkit("finetune", "--config", str(cfg), f"output_dir={tmp_path / 'teacher'}", "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "teacher" / "config.json").read_text())["num_hidden_layers"] == 4


def test_resume_gives_the_same_weights(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    """N steps straight == N/2 steps, stop, --resume for the rest (weights within 1e-6)."""
    extra = {
        "train": {
            "max_steps": 6,
            "batch_size": 8,
            "lr": 1e-3,
            "eval_every": 2,
            "save_every": 2,
            "load_best": False,
        }
    }
    straight = write_config(tmp_path / "a.yaml", tiny_config(tiny_teacher, tiny_csv, tmp_path / "a", **extra))
    split = write_config(tmp_path / "b.yaml", tiny_config(tiny_teacher, tiny_csv, tmp_path / "b", **extra))
    assert kdkit("distill", "--config", str(straight)).returncode == 0
    first = kdkit("distill", "--config", str(split), "--stop-after", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (
        not (tmp_path / "b" / "metrics.json").exists()
        and (tmp_path / "b" / "checkpoints" / "step-3").is_dir()
    )
    again = kdkit("distill", "--config", str(split))
    assert again.returncode == 2 and "--resume" in again.stderr  # refuses to clobber the stopped run
    second = kdkit("distill", "--config", str(split), "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma["validation"] == mb["validation"]


def test_bad_input_is_one_line_and_exit_2(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tiny_teacher, tiny_csv, tmp_path / "x"))
    proc = kdkit("distill", "--config", str(cfg), "train.lrr=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'lr'" in proc.stderr
    proc = kdkit("validate", "--config", str(cfg), "method.name=kdd")
    assert proc.returncode == 2 and "did you mean 'kd'" in proc.stderr
    proc = kdkit("validate", "--config", str(cfg), "data.label=lable")
    assert proc.returncode == 2 and "label" in proc.stderr and "Traceback" not in proc.stderr
    proc = kdkit("distill", "--config", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_validate_and_ls(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tiny_teacher, tiny_csv, tmp_path / "x"))
    proc = kdkit("validate", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "ok:" in proc.stdout and "2 labels" in proc.stdout
    proc = kdkit("ls")
    assert (
        proc.returncode == 0
        and "kd " in proc.stdout
        and "minilm-l6" in proc.stdout
        and ".yaml" in proc.stdout
        and "a Q4_1 GGUF dequantized to fp32" in proc.stdout  # the packaged SmolLM2, labelled honestly
    )
    from kdkit.cli import main

    for command in ("distill", "finetune", "eval", "validate", "ls", "demo", "kb"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


def test_mixkd_through_cli(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "mixkd"
    cfg = write_config(
        tmp_path / "c.yaml", tiny_config(tiny_teacher, tiny_csv, out, method={"name": "mixkd"})
    )
    proc = kdkit("distill", "--config", str(cfg), "train.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "mixkd" and metrics["steps"] == 4
    logs = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert all(r["train/tmkd"] > 0 and r["train/sm"] > 0 for r in logs if "train/loss" in r)
