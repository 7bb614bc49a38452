"""The teacher-vs-students table and the page, on fake run dirs (no models: latency from a fake timer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kdkit.report import write_report
from kdkit.report.collect import read_runs
from kdkit.report.table import Timer, build_table, format_metric, measure
from tests.unit.report.helpers import fake_run, summary_rows

KD = {
    "kind": "distill",
    "method": "kd",
    "parameters": 15_600_000,
    "validation": {"accuracy": 0.81234, "macro_f1": 0.8},
    "test": {"accuracy": 0.79876},
    "teacher": {"validation": {"accuracy": 0.90012}, "test": {"accuracy": 0.88888}},
    "teacher_parameters": 22_700_000,
}
NOKD = {
    "kind": "finetune",
    "method": "finetune",
    "which": "student",
    "parameters": 15_600_000,
    "validation": {"accuracy": 0.75},
    "test": {"accuracy": 0.7},
}
LOGS = [{"step": s, "train/loss": 1.0 / s, "train/lr": 0.1} for s in (1, 2, 3)] + [
    {"step": 3, "eval/accuracy": 0.7}
]


def fake_timer(ms: dict[str, float]) -> Timer:
    """Latency by model dir name, without loading anything."""

    def timer(items: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[float, int]]:
        return {(name, task): (ms[Path(name).name], 1) for name, task in items}

    return timer


def test_one_teacher_row_then_the_students_with_their_numbers(tmp_path: Path) -> None:
    runs = read_runs([fake_run(tmp_path / "kd", KD), fake_run(tmp_path / "nokd", NOKD)])
    table = build_table(runs)
    assert [c.id for c in table.columns] == ["accuracy@validation", "accuracy@test"]
    teacher, kd, nokd = table.rows
    assert teacher.role == "teacher" and teacher.label == "teacher: org/teacher-model"
    assert teacher.parameters == 22_700_000
    assert teacher.quality == {"accuracy@validation": 0.90012, "accuracy@test": 0.88888}
    assert kd.quality == {"accuracy@validation": 0.81234, "accuracy@test": 0.79876}
    assert nokd.quality["accuracy@validation"] == 0.75 and nokd.teacher == kd.teacher == teacher.teacher
    measure(table, fake_timer({"org/teacher-model": 30.0, "teacher-model": 30.0, "kd": 10.0, "nokd": 12.0}))
    assert teacher.speedup == 1.0 and kd.speedup == 3.0 and nokd.speedup == 2.5
    assert format_metric("accuracy", 0.81234) == "0.8123" and format_metric("perplexity", 12.3456) == "12.35"
    assert format_metric("accuracy", None) == "-"


def test_a_teacher_run_given_with_its_students_is_their_teacher_row(tmp_path: Path) -> None:
    teacher_metrics = {**NOKD, "which": "teacher", "parameters": 22_700_000, "validation": {"accuracy": 0.91}}
    del teacher_metrics["test"]
    teacher = fake_run(tmp_path / "my-teacher", teacher_metrics)
    (teacher / "model.safetensors").write_bytes(b"weights")
    copy = fake_run(tmp_path / "copy", teacher_metrics)
    (copy / "model.safetensors").write_bytes(b"weights")  # the same weights elsewhere (the demo's copy)
    by_path = fake_run(tmp_path / "kd", KD, teacher=str(teacher))
    runs = read_runs([teacher, by_path])
    rows = build_table(runs).rows
    assert [(r.label, r.role) for r in rows] == [("my-teacher", "teacher"), ("kd", "student")]
    assert rows[0].quality["accuracy@validation"] == 0.91  # its own metrics first
    assert rows[0].quality["accuracy@test"] == 0.88888  # then what its students measured
    rows = build_table(read_runs([copy, by_path])).rows
    assert [(r.label, r.role) for r in rows] == [("copy", "teacher"), ("kd", "student")]


def test_causal_lm_runs_show_perplexity_and_rouge_and_given_teacher_metrics(tmp_path: Path) -> None:
    lm = {
        "kind": "distill",
        "method": "atkd",
        "parameters": 63_700_000,
        "validation": {"perplexity": 566.2123, "rouge_l": 2.6543},
        "dolly": {"perplexity": 600.0},
        "teacher_parameters": 134_500_000,
    }
    runs = read_runs([fake_run(tmp_path / "atkd", lm, teacher="smollm2-135m", task="causal_lm")])
    table = build_table(runs, {"smollm2-135m": {"validation": {"perplexity": 15.33, "rouge_l": 17.49}}})
    assert [c.id for c in table.columns] == [
        "perplexity@validation",
        "rouge_l@validation",
        "perplexity@dolly",
    ]
    teacher, student = table.rows
    assert teacher.quality == {"perplexity@validation": 15.33, "rouge_l@validation": 17.49}
    assert student.quality["perplexity@dolly"] == 600.0 and teacher.parameters == 134_500_000
    assert "lower is better" in table.columns[0].title


def test_write_report_writes_the_page_and_figures(tmp_path: Path) -> None:
    kd = fake_run(tmp_path / "kd", KD, logs=LOGS)
    nokd = fake_run(tmp_path / "nokd", NOKD, logs=LOGS[:2])
    timer = fake_timer({"teacher-model": 40.0, "kd": 10.0, "nokd": 20.0})
    page = write_report([kd, nokd], tmp_path / "out", timer=timer)
    assert page == tmp_path / "out" / "report.html"
    for name in ("scatter.png", "curves_train.png", "curves_eval.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing remote
    assert "<script" not in html
    rows = summary_rows(html)
    assert list(rows) == ["teacher: org/teacher-model", "kd", "nokd"]
    assert rows["kd"]["accuracy@validation"] == "0.8123" and rows["kd"]["parameters"] == "15,600,000"
    assert rows["teacher: org/teacher-model"]["accuracy@test"] == "0.8889"
    assert rows["kd"]["latency_ms"] == "10.00" and rows["kd"]["speedup"] == "4.00x"
    assert rows["nokd"]["speedup"] == "2.00x"
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left behind

    write_report([kd, nokd], tmp_path / "out", no_latency=True)  # again, without latency
    rows = summary_rows((tmp_path / "out" / "report.html").read_text())
    assert rows["kd"]["latency_ms"] == "-" and rows["kd"]["speedup"] == "-"
    assert json.loads((kd / "metrics.json").read_text()) == KD  # the runs are only read


def test_an_older_teacher_run_is_recognised_by_its_weights(tmp_path: Path) -> None:
    """metrics.json of runs before `which` existed: a finetune run whose model is its own teacher."""
    legacy = {key: value for key, value in NOKD.items() if key != "which"}
    teacher = tmp_path / "teacher"
    fake_run(teacher, legacy, teacher=str(teacher))
    (teacher / "model.safetensors").write_bytes(b"weights")
    student = fake_run(tmp_path / "kd", KD, teacher=str(teacher))
    rows = build_table(read_runs([teacher, student])).rows
    assert [(r.label, r.role) for r in rows] == [("teacher", "teacher"), ("kd", "student")]
    assert rows[1].teacher == rows[0].teacher
