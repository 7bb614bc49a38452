"""Helpers shared by the benchmark scripts (run from the repo root: `python benchmarks/<name>.py`)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_once(fn: Any, config: Path, overrides: list[str], out: Path, **kwargs: Any) -> dict:
    """Metrics of the run in ``out``: read back when finished (metrics.json), else run (resuming) now."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    return fn(config, [*overrides, f"output_dir={out}"], resume=True, **kwargs).metrics


def mean_sd(values: list[float], scale: float = 100.0) -> str:
    """``mean ± standard deviation`` of ``scale * values`` (default: fractions in percent; sd 0 for a single
    value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.2f} ± {scale * sd:.2f}"


def paired(a: list[float], b: list[float], scale: float = 100.0, lower_is_better: bool = False) -> str:
    """Mean ± sd of the per-seed differences ``scale * (a - b)`` (default: fractions, in points), and on how
    many seeds a is ahead (lower when ``lower_is_better``, e.g. perplexity): the paired comparison, which
    seed-to-seed variation shared by both sides does not blur."""
    d = [scale * (x - y) for x, y in zip(a, b, strict=True)]
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    ahead = sum((x < 0) if lower_is_better else (x > 0) for x in d)
    word = "lower" if lower_is_better else "ahead"
    return f"{statistics.mean(d):+.2f} ± {sd:.2f} ({ahead}/{len(d)} {word})"


def data_root_overrides(data_root: str | None) -> list[str]:
    """``data.root=...`` when a folder of local dataset copies is given (the recipes' ``data.local`` copies
    are read from it); none otherwise (the recipes read their hub sources)."""
    return [f"data.root={data_root}"] if data_root else []


def run_children(
    script: str, variants: list[str], extra: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Each variant measured in a fresh process: ``script`` run again with this command's arguments,
    ``--child <variant>`` and ``extra``, its last line of output a JSON object. A variant that fails is
    reported (the end of its stderr) and left out."""
    results = {}
    for variant in variants:
        cmd = [sys.executable, script, *sys.argv[1:], "--child", variant, *(extra or [])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{variant}: failed\n{proc.stderr[-3000:]}", flush=True)
            continue
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(variant, json.dumps(results[variant]), flush=True)
    return results
