"""The report's figures as PNG bytes (matplotlib's Agg canvas: no display, no global pyplot state).

- training curves: one panel per ``train/...`` key, one line per run;
- eval curves: one panel per ``eval/...`` key, one line per run;
- quality vs latency: one point per model of the table (teachers as stars), the first quality column
  against latency (or against parameters when latency was not measured).

Axes whose positive values span more than a factor of 20 are logarithmic (a cut student's perplexity
can start at 1e7).
"""

from __future__ import annotations

import io
import math
from typing import Any

from kdkit.report.collect import Run
from kdkit.report.table import METRIC_TITLES, Table

DPI = 100
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
PANEL = (4.2, 3.0)  # inches per panel


def _figure(width: float, height: float) -> Any:
    # matplotlib: heavy (~1 s to import); only `kdkit report` draws, so it loads here, not with kdkit
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def curve_keys(runs: list[Run], prefix: str) -> list[str]:
    """Keys starting with ``prefix`` that any run logged, in sorted order."""
    return sorted({key for run in runs for key in run.curves if key.startswith(prefix)})


def curves_png(runs: list[Run], prefix: str) -> bytes | None:
    """Panels of the ``prefix`` curves (``train/`` or ``eval/``) of all runs; None when none was logged."""
    # matplotlib: heavy, only for `kdkit report` (see _figure)
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    keys = curve_keys(runs, prefix)
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = _figure(PANEL[0] * cols, PANEL[1] * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    colors = {run.name: COLORS[i % len(COLORS)] for i, run in enumerate(runs)}  # one colour per run
    for i, key in enumerate(keys):
        ax = axes[i // cols][i % cols]
        for run in runs:
            points = run.curves.get(key)
            if not points:
                continue
            steps, values = list(points), list(points.values())
            marker = "o" if len(steps) <= 12 else None
            ax.plot(steps, values, marker=marker, markersize=3, color=colors[run.name], label=run.name)
        if _wide_range([v for run in runs for v in run.curves.get(key, {}).values()]):
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for j in range(len(keys), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    handles = [Line2D([], [], color=colors[run.name], label=run.name) for run in runs]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize="small")
    return _png(fig)


def _wide_range(values: list[float]) -> bool:
    """Positive values over more than a factor of 20 (e.g. the perplexity of a cut student): log scale."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20


def scatter_png(table: Table) -> bytes | None:
    """Quality (the table's first column) against latency, or against parameters without latency."""
    if not table.columns:
        return None
    column = table.columns[0]
    with_latency = any(row.latency_ms is not None for row in table.rows)
    points = []
    for row in table.rows:
        x = row.latency_ms if with_latency else row.parameters
        y = row.quality.get(column.id)
        if x is not None and y is not None:
            points.append((row, float(x), y))
    if not points:
        return None
    fig = _figure(6.4, 4.4)
    ax = fig.subplots()
    for row, x, y in points:
        teacher = row.role == "teacher"
        ax.scatter(
            [x],
            [y],
            marker="*" if teacher else "o",
            s=160 if teacher else 60,
            color="#d62728" if teacher else "#1f77b4",
            zorder=3,
        )
        ax.annotate(row.label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small")
    if _wide_range([y for _, _, y in points]):
        ax.set_yscale("log")
    ax.set_xlabel("latency (ms per batch)" if with_latency else "parameters")
    ax.set_ylabel(f"{METRIC_TITLES.get(column.metric, column.metric)} ({column.split})")
    ax.set_title("quality vs latency (teachers: stars)" if with_latency else "quality vs size")
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    return _png(fig)
