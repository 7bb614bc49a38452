"""benchmarks/gpu/check.sh --shrink: the GPU check's steps, a few batches long on the CPU (minutes on 2
cores with the packaged SmolLM2, so marked slow: `make test-slow`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_check_runs_shrunk_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check"
    env = {**os.environ, "KDKIT_DATA_ROOT": str(SHARED_DATA)}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "check.sh"), "--shrink", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")][2:]
    assert [r.split("|")[1].strip() for r in rows] == ["lm_speed", "cache", "distill", "ddp"]
    assert all(r.split("|")[2].strip() == "ok" for r in rows)
    assert "kdkit cached, beta 0" in (out / "lm_speed.log").read_text()
    assert (out / "distill" / "model.safetensors").is_file() and (out / "distill_metrics.json").is_file()


def test_the_gpu_check_refuses_unknown_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "check.sh"), "--fast"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown argument '--fast'" in proc.stderr
