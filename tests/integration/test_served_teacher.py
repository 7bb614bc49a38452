"""Distillation from a served teacher (`teacher.server`) on tiny models: it trains as from the cache
(same top-k rows, the teacher never loaded in training), on-policy samples are scored by the server, a
server with another teacher is refused, and a server killed with SIGKILL mid-run stops training with one
line naming it and the last checkpoint; `--resume` after a restart gives the uninterrupted run's weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kdkit.commands.cache import build_cache_for_config
from kdkit.errors import KdkitError
from kdkit.train.run import distill
from tests.conftest import tiny_llama
from tests.integration.test_cli_tiny import write_config
from tests.integration.test_lm_tiny import lm_config
from tests.integration.test_teacher_server import _free_port, _start

pytestmark = pytest.mark.integration


def _no_teacher(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the teacher's weights were loaded in the training process")


@pytest.fixture(scope="module")
def served(tiny_lm: Path):
    port = _free_port()
    proc = _start(tiny_lm, port)
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def _close(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=1e-3, msg=key)


@pytest.mark.parametrize("method", ["forward_kl", "atkd"])
def test_a_served_teacher_trains_as_the_cache(
    served: str, tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    config = lm_config(
        tiny_lm, tiny_jsonl, tmp_path / "cached", eval={"splits": ["validation"], "rouge": False}
    )
    config["method"] = {"name": method, "chunk_size": 16, "temperature": 2.0}
    config["cache"] = {"dir": str(tmp_path / "cache"), "top_k": 8}
    build_cache_for_config(config)
    monkeypatch.setattr("kdkit.family.causal_lm.load_causal_lm", _no_teacher)
    cached = distill(config, overwrite=True)
    config["teacher"] = {**config["teacher"], "server": served}
    config["cache"] = {"top_k": 8}
    served_run = distill({**config, "output_dir": str(tmp_path / "served")}, overwrite=True)
    _close(cached.output_dir, served_run.output_dir, atol=1e-5)
    assert served_run.metrics["validation"]["perplexity"] == pytest.approx(
        cached.metrics["validation"]["perplexity"], rel=1e-4
    )


def test_on_policy_samples_are_scored_by_the_server(
    served: str, tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path
) -> None:
    config = lm_config(tiny_lm, tiny_jsonl, tmp_path / "run", eval={"splits": ["validation"], "rouge": False})
    config["teacher"] = {**config["teacher"], "server": served}
    config["generation"] = {**config["generation"], "on_policy": 1.0}
    config["cache"] = {"top_k": 8}  # the tiny vocabulary has 46 tokens
    result = distill(config, overwrite=True)
    assert result.metrics["steps"] == 4 and result.metrics["validation"]["perplexity"] > 1.0


def test_a_server_with_another_teacher_is_refused(served: str, tiny_jsonl: Path, tmp_path: Path) -> None:
    other = tiny_llama(tmp_path / "other", seed=7)  # the same tokenizer, other weights
    config = lm_config(other, tiny_jsonl, tmp_path / "run")
    config["teacher"] = {**config["teacher"], "server": served}
    with pytest.raises(KdkitError, match="serves another teacher"):
        distill(config)


def test_a_killed_server_stops_training_in_one_line_and_resume_matches(
    tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(tiny_lm, port)
    config = lm_config(tiny_lm, tiny_jsonl, tmp_path / "whole", eval={"splits": [], "rouge": False})
    config["teacher"] = {**config["teacher"], "server": url, "server_retry_seconds": 3}
    config["train"] = {
        **config["train"],
        "max_steps": 30,
        "save_every": 5,
        "log_every": 10,
        "eval_every": None,
    }
    config["cache"] = {"top_k": 8}
    whole = distill(config)  # the uninterrupted run
    config["output_dir"] = str(tmp_path / "killed")
    cfg = write_config(tmp_path / "c.yaml", config)
    run = subprocess.Popen(
        [sys.executable, "-m", "kdkit.cli", "distill", "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not any(int(p.name[5:]) >= 10 for p in (tmp_path / "killed" / "checkpoints").glob("step-*")):
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    server.send_signal(signal.SIGKILL)
    server.wait()
    _, err = run.communicate(timeout=300)
    assert run.returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith(f"error: teacher server {url} unreachable for 3 s") and "last good checkpoint" in last
    )
    assert "--resume" in last
    server = _start(tiny_lm, port)  # back
    try:
        resumed = subprocess.run(
            [sys.executable, "-m", "kdkit.cli", "distill", "--config", str(cfg), "--resume"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        server.kill()
        server.wait()
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["steps"] == 30
    _close(whole.output_dir, tmp_path / "killed", atol=0)


def test_validate_says_whether_the_server_answers(
    served: str, tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path
) -> None:
    from kdkit.config import load_config
    from kdkit.validate import validate

    config = lm_config(tiny_lm, tiny_jsonl, tmp_path / "run")
    config["teacher"] = {**config["teacher"], "server": served}
    assert any(line.startswith(f"teacher server: {served} serves") for line in validate(load_config(config)))
    config["teacher"]["server"] = f"http://127.0.0.1:{_free_port()}"  # nothing there
    assert any("does not answer now" in line for line in validate(load_config(config)))


def test_a_served_teacher_among_several(served: str, tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path) -> None:
    """A cached teacher and the same teacher served, weighted 1:3 (``teachers:``), train as the cache alone."""
    config = lm_config(
        tiny_lm, tiny_jsonl, tmp_path / "cached", eval={"splits": ["validation"], "rouge": False}
    )
    config["cache"] = {"dir": str(tmp_path / "cache"), "top_k": 8}
    build_cache_for_config(config)
    cached = distill(config)
    both = {**config, "output_dir": str(tmp_path / "both")}
    both["teachers"] = [{"model": str(tiny_lm), "server": served, "weight": 3.0}]
    _close(cached.output_dir, distill(both).output_dir, atol=1e-5)
