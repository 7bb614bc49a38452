"""The teacher-vs-students table of a report: one row per teacher, then one per student run.

Quality is each run's main metric (``train.best_metric`` or the task default; causal LMs also ROUGE-L) on
every eval split in its metrics.json; a teacher's quality comes from its own run dir when it is one of the
reported runs, else from the ``teacher`` section that distill runs write, else from metrics passed in.
Latency is filled in afterwards (``measure``); the speed-up of a row is its teacher's latency over its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kdkit.eval.metrics import greater_is_better
from kdkit.report.collect import Run, is_same_model, teacher_label, teacher_ref

METRIC_TITLES = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "f1": "F1",
    "mcc": "MCC",
    "pearson": "Pearson",
    "spearman": "Spearman",
    "mse": "MSE",
    "perplexity": "perplexity",
    "rouge_l": "ROUGE-L",
    "bits_per_byte": "bits/byte",
}


@dataclass(frozen=True)
class Column:
    """A quality column: one metric on one split."""

    metric: str
    split: str

    @property
    def id(self) -> str:
        return f"{self.metric}@{self.split}"

    @property
    def title(self) -> str:
        arrow = "higher is better" if greater_is_better(self.metric) else "lower is better"
        return f"{METRIC_TITLES.get(self.metric, self.metric)} ({self.split}; {arrow})"


@dataclass
class Row:
    """One model of the table."""

    label: str
    role: str  # "teacher" or "student"
    method: str
    task: str
    load: str | None  # what to load to time it: a run dir or a model name; None: cannot be timed
    teacher: str | None  # key of this row's teacher row (a teacher row: its own key)
    parameters: int | None = None
    quality: dict[str, float] = field(default_factory=dict)  # Column.id -> value
    latency_ms: float | None = None
    speedup: float | None = None
    run: Run | None = None


@dataclass
class Table:
    columns: list[Column]
    teachers: dict[str, Row]  # key -> teacher row, in order of first mention
    students: list[Row]

    @property
    def rows(self) -> list[Row]:
        return [*self.teachers.values(), *self.students]


def format_metric(metric: str, value: float | None) -> str:
    """A metric as the report shows it: perplexity and ROUGE-L with 2 decimals, others with 4."""
    if value is None:
        return "-"
    return f"{value:.2f}" if metric in ("perplexity", "rouge_l") else f"{value:.4f}"


def format_parameters(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def format_latency(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_speedup(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _quality(run: Run, section: dict[str, Any]) -> dict[str, float]:
    """Quality values of ``run``'s splits and metrics found in ``section`` (its metrics or their teacher
    part)."""
    values = {}
    for split in run.eval_splits():
        for metric in run.quality_metrics():
            value = section.get(split, {}).get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[Column(metric, split).id] = float(value)
    return values


def build_table(runs: list[Run], teacher_metrics: dict[str, dict[str, Any]] | None = None) -> Table:
    """Rows for ``runs``. ``teacher_metrics`` maps a configured teacher name (``teacher.model``) to
    ``{split: {metric: value}}`` for teachers whose runs did not evaluate them (``eval.teacher: false``)."""
    teachers: dict[str, Row] = {}
    alias: dict[str, str] = {}  # teacher ref of a student -> key of the teacher row
    teacher_runs = [r for r in runs if _is_teacher_run(r)]
    for run in teacher_runs:  # fine-tuned teachers given as run dirs
        key = f"run:{run.dir.resolve()}"
        teachers[key] = _run_row(run, "teacher", key)
    students: list[Row] = []
    for run in runs:
        if any(run is t for t in teacher_runs):
            continue
        ref = teacher_ref(run.config)
        key = None
        if ref is not None:
            if ref not in alias:
                match = next((t for t in teacher_runs if is_same_model(t.dir, ref)), None)
                alias[ref] = f"run:{match.dir.resolve()}" if match else ref
            key = alias[ref]
            if key not in teachers:
                label = f"teacher: {teacher_label(run.config)}"
                teachers[key] = Row(label, "teacher", "-", run.task, load=ref, teacher=key)
            _fill_teacher(teachers[key], run, teacher_metrics or {})
        students.append(_run_row(run, "student", key))
    columns: list[Column] = []
    for row in [*students, *teachers.values()]:
        for column_id in row.quality:
            metric, split = column_id.split("@", 1)
            if Column(metric, split) not in columns:
                columns.append(Column(metric, split))
    return Table(columns, teachers, students)


def _run_row(run: Run, role: str, teacher: str | None) -> Row:
    quality = _quality(run, run.metrics)
    parameters = run.metrics.get("parameters")
    return Row(run.name, role, run.method, run.task, str(run.dir), teacher, parameters, quality, run=run)


def _is_teacher_run(run: Run) -> bool:
    """A fine-tuned teacher: metrics.json says so, or (runs before it did) the run's model is its own
    configured teacher, e.g. a teacher fine-tuned by ``teacher.finetune`` and cached."""
    if run.which == "teacher":
        return True
    if run.kind != "finetune" or "which" in run.metrics:
        return False
    ref = teacher_ref(run.config)
    return ref is not None and is_same_model(run.dir, ref)


def _fill_teacher(row: Row, run: Run, teacher_metrics: dict[str, dict[str, Any]]) -> None:
    """Complete a teacher row from a student run: its teacher metrics and parameter count (first wins)."""
    if row.parameters is None and isinstance(run.metrics.get("teacher_parameters"), int):
        row.parameters = run.metrics["teacher_parameters"]
    found = _quality(run, run.metrics.get("teacher", {}))
    found.update(_quality(run, teacher_metrics.get(str(run.config.teacher.model), {})))
    for column_id, value in found.items():
        row.quality.setdefault(column_id, value)


# [(name or dir, task)] -> {(name or dir, task): (ms per forward pass, parameters)}
Timer = Callable[[list[tuple[str, str]]], dict[tuple[str, str], tuple[float, int]]]


def measure(table: Table, timer: Timer) -> None:
    """Time every row (each model once) and set the speed-ups against each row's teacher."""
    rows = [row for row in table.rows if row.load is not None]
    results = timer([(str(row.load), row.task) for row in rows])
    for row in rows:
        row.latency_ms, parameters = results[(str(row.load), row.task)]
        if row.parameters is None:
            row.parameters = parameters
    for row in table.rows:
        teacher = table.teachers.get(row.teacher) if row.teacher else None
        if teacher is not None and teacher.latency_ms and row.latency_ms:
            row.speedup = teacher.latency_ms / row.latency_ms
