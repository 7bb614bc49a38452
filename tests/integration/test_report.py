"""`kdkit report` and the model cards on real tiny runs: the page rendered by headless Chromium (a
screenshot that is not blank, a DOM whose table holds the numbers of metrics.json), a causal-LM report,
and the README.md that every run writes and `transformers` ignores."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from kdkit.cli import main
from kdkit.report import LatencySettings, write_report
from kdkit.report.table import format_metric
from kdkit.train.run import distill, finetune
from tests.conftest import tiny_config
from tests.integration.test_lm_tiny import lm_config
from tests.unit.report.helpers import summary_rows

# the Chromium binaries looked up on PATH, in order; scripts/install-system-deps.sh installs Debian's `chromium`
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def tiny_runs(tiny_teacher: Path, tiny_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A KD student (through the CLI, in-process) and a no-KD student (Python API) of the tiny teacher."""
    root = tmp_path_factory.mktemp("report_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDKIT_HOME", str(root / "home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        config = root / "kd.yaml"
        config.write_text(yaml.safe_dump(tiny_config(tiny_teacher, tiny_csv, root / "kd")))
        assert main(["distill", "--config", str(config)]) == 0
        finetune(tiny_config(tiny_teacher, tiny_csv, root / "nokd"), which="student")
        yield root


def chromium_binary() -> str:
    """The first Chromium on PATH; fails (never skips) without one: the report test needs a browser."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}): the report test renders its page "
        "in headless Chromium; run scripts/install-system-deps.sh or install one of them",
        pytrace=False,
    )


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    cmd = [chromium_binary(), *FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_report_renders_in_chromium_with_the_numbers_of_metrics_json(tiny_runs: Path, tmp_path: Path) -> None:
    chromium_binary()  # fail first, with the fix, where no Chromium is installed
    out = tmp_path / "report"
    assert main(["report", str(tiny_runs / "kd"), str(tiny_runs / "nokd"), "--output", str(out)]) == 0
    page = out / "report.html"
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "<script" not in html  # offline

    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 100, f"only {len(colours)} colours: the page did not render"
    orange = np.abs(pixels - np.array([0xFF, 0x7F, 0x0E])).sum(axis=-1) < 30  # 2nd run's curve colour
    assert orange.sum() > 200, "the figures did not load"

    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    rows = summary_rows(dom)
    kd = json.loads((tiny_runs / "kd" / "metrics.json").read_text())
    nokd = json.loads((tiny_runs / "nokd" / "metrics.json").read_text())
    teacher = next(r for r in rows.values() if r["role"] == "teacher")
    assert list(rows) == [teacher["run"], "kd", "nokd"]
    assert teacher["accuracy@validation"] == format_metric(
        "accuracy", kd["teacher"]["validation"]["accuracy"]
    )
    assert teacher["parameters"] == f"{kd['teacher_parameters']:,}" and teacher["speedup"] == "1.00x"
    for name, metrics in (("kd", kd), ("nokd", nokd)):
        row = rows[name]
        assert row["accuracy@validation"] == format_metric("accuracy", metrics["validation"]["accuracy"])
        assert row["parameters"] == f"{metrics['parameters']:,}"
        assert re.fullmatch(r"\d+\.\d\d", row["latency_ms"]) and float(row["latency_ms"]) > 0
        speedup = float(teacher["latency_ms"]) / float(row["latency_ms"])  # from the rounded latencies
        assert row["speedup"].endswith("x") and float(row["speedup"][:-1]) == pytest.approx(speedup, rel=0.03)
    assert rows["kd"]["method"] == "kd" and rows["nokd"]["method"] == "finetune"


def test_every_run_writes_a_model_card_that_transformers_ignores(tiny_runs: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    kd_card = (tiny_runs / "kd" / "README.md").read_text()
    meta = yaml.safe_load(kd_card.split("---\n")[1])
    assert meta["library_name"] == "transformers" and "knowledge-distillation" in meta["tags"]
    assert "kdkit distill --config " + str(tiny_runs / "kd.yaml") in kd_card  # recorded by the CLI
    metrics = json.loads((tiny_runs / "kd" / "metrics.json").read_text())
    accuracy = f"{metrics['validation']['accuracy']:.4f}"
    assert f"| this model | validation | {accuracy} |" in kd_card
    assert "Distilling the Knowledge in a Neural Network" in kd_card and "- transformers " in kd_card
    nokd_card = (tiny_runs / "nokd" / "README.md").read_text()
    assert "Python API: kdkit.finetune(...)" in nokd_card  # not the CLI command of the earlier run
    model = AutoModelForSequenceClassification.from_pretrained(tiny_runs / "kd")
    assert model.config.num_hidden_layers == 2


def test_causal_lm_report_and_card(tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    result = distill(lm_config(tiny_lm, tiny_jsonl, tmp_path / "fkl"))
    metrics = result.metrics
    page = write_report([tmp_path / "fkl"], tmp_path / "report", latency=LatencySettings(2, 16, 3))
    rows = summary_rows(page.read_text())
    teacher, student = rows.values()
    val = metrics["validation"]
    assert student["perplexity@validation"] == format_metric("perplexity", val["perplexity"])
    assert student["rouge_l@validation"] == format_metric("rouge_l", val["rouge_l"])
    t_val = metrics["teacher"]["validation"]
    assert teacher["perplexity@validation"] == format_metric("perplexity", t_val["perplexity"])
    assert float(student["latency_ms"]) > 0 and student["speedup"].endswith("x")
    assert (tmp_path / "report" / "curves_train.png").is_file()
    card = (tmp_path / "fkl" / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and f"{val['perplexity']:.4f}" in card
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "fkl").config.num_hidden_layers == 2
