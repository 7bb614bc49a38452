"""Helpers shared by the benchmark scripts (run from the repo root: `python benchmarks/<name>.py`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def run_once(fn: Any, config: Path, overrides: list[str], out: Path, **kwargs: Any) -> dict:
    """Metrics of the run in ``out``: read back when finished (metrics.json), else run (resuming) now."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    return fn(config, [*overrides, f"output_dir={out}"], resume=True, **kwargs).metrics


def mean_sd(values: list[float]) -> str:
    """``mean ± standard deviation`` in percent (sd 0 for a single value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def data_root_overrides(data_root: str | None) -> list[str]:
    """``data.root=...`` when a folder of local dataset copies is given (the recipes' ``data.local`` copies
    are read from it); none otherwise (the recipes read their hub sources)."""
    return [f"data.root={data_root}"] if data_root else []
