"""The report page: one self-contained HTML file (inline CSS, no scripts, no remote fonts or CDNs) that
shows the PNG figures saved beside it."""

from __future__ import annotations

import datetime
from html import escape
from typing import Any

from kdkit.report.collect import Run
from kdkit.report.table import (
    Table,
    format_latency,
    format_metric,
    format_parameters,
    format_speedup,
)
from kdkit.version import __version__

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #1b1f24; background: #ffffff; }
h1 { border-bottom: 3px solid #1f77b4; padding-bottom: .3em; }
h2 { margin-top: 1.8em; color: #1f4e79; }
table { border-collapse: collapse; margin: .8em 0; font-size: .95em; }
th, td { border: 1px solid #c8d1dc; padding: .35em .7em; }
th { background: #e8f0f8; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.teacher td { background: #fff4e5; font-weight: 600; }
.note { color: #57606a; font-size: .9em; }
img { max-width: 100%; border: 1px solid #d0d7de; margin: .5em 0; }
code { background: #f3f5f7; padding: 0 .25em; }
"""


def _cell(text: str, numeric: bool = True, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{escape(v)}"' for k, v in attrs.items())
    cls = ' class="num"' if numeric else ""
    return f"<td{cls}{extra}>{escape(text)}</td>"


def summary_table(table: Table, latency_title: str) -> str:
    """The teacher-vs-students table (``id="summary"``; each row's ``data-run``, each quality column's
    ``data-column`` = ``metric@split``)."""
    head = [
        '<th data-column="model">model</th>',
        '<th data-column="role">role</th>',
        '<th data-column="method">method</th>',
        '<th data-column="parameters">parameters</th>',
        *(f'<th data-column="{escape(c.id)}">{escape(c.title)}</th>' for c in table.columns),
        f'<th data-column="latency_ms">{escape(latency_title)}</th>',
        '<th data-column="speedup">speed-up vs teacher</th>',
    ]
    lines = ['<table id="summary">', "<thead><tr>" + "".join(head) + "</tr></thead>", "<tbody>"]
    for row in table.rows:
        cells = [
            _cell(row.label, numeric=False),
            _cell(row.role, numeric=False),
            _cell(row.method, numeric=False),
            _cell(format_parameters(row.parameters)),
            *(_cell(format_metric(c.metric, row.quality.get(c.id))) for c in table.columns),
            _cell(format_latency(row.latency_ms)),
            _cell(format_speedup(row.speedup)),
        ]
        lines.append(
            f'<tr class="{row.role}" data-run="{escape(row.label)}" data-role="{row.role}">'
            + "".join(cells)
            + "</tr>"
        )
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _run_details(run: Run) -> str:
    c, m = run.config, run.metrics
    facts = [
        ("dir", str(run.dir)),
        ("task", run.task),
        ("method", run.method + ("" if run.kind == "distill" else f" (the {run.which})")),
        ("teacher", str(c.teacher.model) if run.kind == "distill" else "-"),
        ("train data", str(c.data.dataset or c.data.train)),
        ("steps (best)", f"{m.get('steps', '-')} ({m.get('best_step', '-')})"),
        ("train seconds", str(m.get("train_seconds", "-"))),
        ("model card", str(run.dir / "README.md") if (run.dir / "README.md").is_file() else "-"),
    ]
    out = [f"<h3>{escape(run.name)}</h3>", "<table>"]
    out += [f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts]
    out.append("</table>")
    splits = {k: v for k, v in m.items() if isinstance(v, dict) and k in run.eval_splits()}
    for name, section in (("student", splits), ("teacher", m.get("teacher", {}))):
        if not section:
            continue
        metrics = sorted({k for values in section.values() for k in values})
        out.append(
            f"<table><tr><th>{name}</th>" + "".join(f"<th>{escape(k)}</th>" for k in metrics) + "</tr>"
        )
        for split, values in section.items():
            cells = "".join(_cell(_plain(values.get(k))) for k in metrics)
            out.append(f"<tr><th>{escape(split)}</th>{cells}</tr>")
        out.append("</table>")
    return "\n".join(out)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def render_page(
    table: Table,
    runs: list[Run],
    figures: dict[str, str],
    *,
    latency_note: str,
    notes: list[str],
    title: str = "kdkit report",
) -> str:
    """The whole page. ``figures`` maps a section title to a PNG file name next to the page."""
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    latency_title = "latency (ms per batch)" if latency_note else "latency"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="note">{len(runs)} run(s); written by kdkit {escape(__version__)} on {when}.</p>',
        "<h2>Teacher vs students</h2>",
        summary_table(table, latency_title),
        f'<p class="note">Latency: {escape(latency_note or "not measured (--no-latency)")}. '
        "Speed-up: the teacher's latency over the model's. Quality: the metric that picked the best "
        "checkpoint (causal LMs: also ROUGE-L) on each eval split of metrics.json.</p>",
        *(f'<p class="note">{escape(n)}</p>' for n in notes),
    ]
    for heading, file_name in figures.items():
        parts += [f"<h2>{escape(heading)}</h2>", f'<img src="{escape(file_name)}" alt="{escape(heading)}">']
    parts.append("<h2>Runs</h2>")
    parts += [_run_details(run) for run in runs]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
