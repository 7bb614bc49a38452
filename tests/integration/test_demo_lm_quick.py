"""`kdkit demo lm --quick` on the packaged SmolLM2-135M (converted once): a few minutes on 2 cores, so it
is marked slow (`make test-slow`); the tiny-Llama tests in test_lm_tiny.py cover the same code paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit.demo_lm import run_demo_lm
from tests.conftest import SHARED_DATA


@pytest.mark.slow
def test_demo_lm_quick_runs_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDKIT_DATA_ROOT", str(SHARED_DATA))  # the recipe's local copy of dolly
    rows = run_demo_lm(tmp_path / "demo", quick=True)
    teacher, before, fkl = rows
    assert fkl["model"] == "student 20 layers, forward KL"
    assert (
        teacher["parameters"] > 130e6
        and before["parameters"] == fkl["parameters"] < 0.8 * teacher["parameters"]
    )
    assert all(r["perplexity"] > 1 and 0 <= r["rouge_l"] <= 100 for r in rows)
    assert teacher["perplexity"] < before["perplexity"]  # the cut student starts far from the teacher
    assert teacher["tokens_per_s"] > 0 and fkl["tokens_per_s"] > 0
    assert (tmp_path / "demo" / "forward_kl" / "model.safetensors").is_file()
    assert (tmp_path / "demo" / "teacher-cache" / "meta.json").is_file()  # trained from the cache
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved[2]["perplexity"] == fkl["perplexity"]
    from tests.unit.report.helpers import summary_rows

    table = summary_rows((tmp_path / "demo" / "report" / "report.html").read_text())
    assert list(table)[1:] == ["forward_kl"]
    teacher_row = table[next(iter(table))]
    assert teacher_row["role"] == "teacher"
    assert teacher_row["perplexity@validation"] == f"{teacher['perplexity']:.2f}"  # given by the demo
