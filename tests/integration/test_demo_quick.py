"""`kdkit demo --quick` on the real packaged assets (MiniLM-L6 and the tweets): a minute, not fifteen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit.demo import run_demo


@pytest.mark.integration
def test_demo_quick_runs_and_reports(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", quick=True)
    rows = result["rows"]
    assert [r["model"].split(",")[-1].strip() for r in rows] == ["fine-tuned)", "no KD", "KD"]
    teacher, nokd, kd = rows
    assert (
        teacher["parameters"] > 20e6 and nokd["parameters"] == kd["parameters"] < 0.75 * teacher["parameters"]
    )
    assert all(0 <= r["accuracy"] <= 1 and r["latency_ms"] > 0 for r in rows)
    assert kd["speedup"] > 1.0  # 2 of 6 layers: faster than the teacher
    for name in ("teacher", "student-nokd", "student-kd"):
        assert (tmp_path / "demo" / name / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved[2]["accuracy"] == kd["accuracy"]
    assert "| student 2L, KD |" in (tmp_path / "demo" / "results.md").read_text()
    from tests.unit.report.helpers import summary_rows

    report = tmp_path / "demo" / "report" / "report.html"
    assert result["report"] == report and (tmp_path / "demo" / "report" / "curves_train.png").is_file()
    table = summary_rows(report.read_text())
    assert list(table) == ["teacher", "student-nokd", "student-kd"]  # the teacher run is the teacher row
    assert table["teacher"]["role"] == "teacher"
    assert table["student-kd"]["accuracy@test"] == f"{kd['accuracy']:.4f}"
    assert float(table["student-kd"]["speedup"].rstrip("x")) > 1.0
    assert (tmp_path / "demo" / "student-kd" / "README.md").is_file()  # the model card
