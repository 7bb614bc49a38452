"""`kdkit report`: read run dirs, time their models, draw the figures and write the page.

Output dir::

    report.html          the page (inline CSS, no scripts; opens offline)
    scatter.png          quality vs latency (vs parameters with no_latency)
    curves_train.png     training curves (train/... keys of logs/train.jsonl)
    curves_eval.png      evaluation curves (eval/... keys)

Every file is written atomically; the page last, so it never points at a figure not yet there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdkit.io import atomic_write_bytes, atomic_write_text
from kdkit.report.collect import read_runs
from kdkit.report.figures import curves_png, scatter_png
from kdkit.report.html import render_page
from kdkit.report.latency import LatencySettings, make_timer
from kdkit.report.table import Timer, build_table, measure

FIGURES = {
    "scatter.png": "Quality vs latency",
    "curves_train.png": "Training curves",
    "curves_eval.png": "Evaluation curves",
}


def write_report(
    run_dirs: list[str | Path],
    output: str | Path,
    *,
    latency: LatencySettings | None = None,
    no_latency: bool = False,
    teacher_metrics: dict[str, dict[str, Any]] | None = None,
    title: str = "kdkit report",
    timer: Timer | None = None,
) -> Path:
    """Write the report of ``run_dirs`` into ``output``; returns the path of report.html.

    ``latency`` sets how models are timed (default ``LatencySettings()``: batch 8 x 128 tokens on CPU);
    ``no_latency`` skips timing (the table shows "-"). ``teacher_metrics`` maps a teacher name
    (``teacher.model``) to ``{split: {metric: value}}`` for runs that did not evaluate their teacher.
    ``timer`` replaces the real timing (tests).
    """
    runs = read_runs(list(run_dirs))
    table = build_table(runs, teacher_metrics)
    settings = latency or LatencySettings()
    note = ""
    if not no_latency:
        measure(table, timer or make_timer(settings))
        note = settings.describe()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    pngs = {
        "scatter.png": scatter_png(table),
        "curves_train.png": curves_png(runs, "train/"),
        "curves_eval.png": curves_png(runs, "eval/"),
    }
    notes = list(settings.notes)
    titles = {**FIGURES, "scatter.png": "Quality vs size"} if no_latency else FIGURES
    figures = {}
    for name, data in pngs.items():
        if data is None:
            (out / name).unlink(missing_ok=True)  # a stale figure of an earlier report
            notes.append(f"{titles[name]}: nothing to plot.")
            continue
        atomic_write_bytes(out / name, data)
        figures[titles[name]] = name
    page = render_page(table, runs, figures, latency_note=note, notes=notes, title=title)
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
