"""Fake run dirs (config.yaml, metrics.json, logs/train.jsonl; no model) and a parser of the report's
summary table, shared by the report tests."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from kdkit.config import load_config


def fake_run(
    path: Path,
    metrics: dict[str, Any],
    *,
    teacher: str = "org/teacher-model",
    task: str = "classification",
    logs: list[dict[str, Any]] | None = None,
    **sections: Any,
) -> Path:
    """A finished run dir as kdkit writes it, without the model files."""
    raw: dict[str, Any] = {
        "task": task,
        "output_dir": str(path),
        "teacher": {"model": teacher},
        "student": {"layers": [0, 3]},
        "data": {"train": "train.csv"},
        "method": {"name": "forward_kl" if task == "causal_lm" else "kd"},
    }
    raw.update(sections)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(load_config(raw).to_yaml())
    (path / "metrics.json").write_text(json.dumps(metrics))
    if logs is not None:
        (path / "logs").mkdir(exist_ok=True)
        (path / "logs" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    return path


class SummaryParser(HTMLParser):
    """Rows of ``<table id="summary">`` as {data-column: cell text}, plus each row's data-run."""

    def __init__(self) -> None:
        super().__init__()
        self.columns: list[str] = []
        self.rows: list[dict[str, str]] = []
        self._in_table = False
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._run = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id") == "summary":
            self._in_table = True
        elif self._in_table and tag == "th":
            self.columns.append(str(a.get("data-column")))
        elif self._in_table and tag == "tr" and "data-run" in a:
            self._row, self._run = [], str(a["data-run"])
        elif self._row is not None and tag == "td":
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append({"run": self._run, **dict(zip(self.columns, self._row, strict=True))})
            self._row = None
        elif tag == "table" and self._in_table:
            self._in_table = False


def summary_rows(html: str) -> dict[str, dict[str, str]]:
    """The summary table of a report page: data-run -> {column: text}."""
    parser = SummaryParser()
    parser.feed(html)
    return {row["run"]: row for row in parser.rows}
