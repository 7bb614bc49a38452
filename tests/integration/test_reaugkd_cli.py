"""ReAugKD end to end through the CLI on a tiny teacher: `kdkit kb build`, `distill` (reusing that KB),
`eval` with and without retrieval, `predict`, and a stale KB refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from tests.conftest import tiny_config
from tests.integration.test_cli_tiny import kdkit, write_config


def test_reaugkd_through_the_cli(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    method = {"name": "reaugkd", "k": 4, "retrieval_k": 4, "head_epochs": 2}
    config = tiny_config(tiny_teacher, tiny_csv, out, method=method)
    config["train"]["best_metric"] = "macro_f1"  # beta: auto chooses by the run's selection metric
    cfg = write_config(tmp_path / "c.yaml", config)

    proc = kdkit("kb", "build", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.loads(proc.stdout.strip().splitlines()[-1])
    assert built["entries"] == 72 and built["dim"] == 32 and Path(built["kb"]) == out / "kb"

    proc = kdkit("validate", "--config", str(cfg), f"method.kb={out / 'kb'}")
    assert proc.returncode == 0 and "knowledge base: " in proc.stdout and "72 entries" in proc.stdout

    proc = kdkit("distill", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "using the knowledge base" in proc.stderr  # the KB built above, not a new one (a note: stderr)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "reaugkd"
    assert set(metrics["retrieval"]["validation"]) == set(metrics["validation"]) - {"agreement"}
    chosen = metrics["inference_settings"]  # method.beta: auto (the default), chosen on validation
    assert chosen["chosen_on"] == "validation" and 0 <= chosen["beta"] <= 1 and chosen["k"] <= 72
    assert chosen["metric"] == "macro_f1"
    with_retrieval = metrics["retrieval"]["validation"][chosen["metric"]]
    assert with_retrieval == pytest.approx(chosen["value"]) and with_retrieval >= chosen["student_alone"]
    assert chosen["student_alone"] == pytest.approx(metrics["validation"][chosen["metric"]])
    assert f"| inference settings | {chosen['description']} |" in (out / "README.md").read_text()
    diagnostics = metrics["retrieval_diagnostics"]["validation"]  # why retrieval helps or hurts
    assert diagnostics["k"] == chosen["k"] and diagnostics["tau"] == chosen["tau"]
    assert diagnostics["student_alone"] == pytest.approx(metrics["validation"]["accuracy"])  # in accuracy
    assert all(
        0 <= diagnostics[m] <= 1 for m in ("teacher_knn", "student_knn", "agree_teacher", "neighbour_overlap")
    )
    AutoModelForSequenceClassification.from_pretrained(out)  # the student alone loads with transformers

    proc = kdkit(
        "eval", "--model", str(out), "--config", str(cfg), "--split", "validation", "--split", "train"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert evaluated["validation"]["accuracy"] == metrics["validation"]["accuracy"]
    assert evaluated["retrieval"]["validation"] == metrics["retrieval"]["validation"]
    assert "train" in evaluated["retrieval"]

    proc = kdkit("predict", "--model", str(out), "--text", "a lovely film", "--text", "awful plot")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["retrieval"] for r in rows] == [True, True]
    from kdkit.retrieval.predictor import ReAugPredictor

    predictor = ReAugPredictor.from_pretrained(out)  # serves the chosen settings
    assert (predictor.settings.beta, predictor.settings.k) == (chosen["beta"], chosen["k"])
    assert all(r["label"] in ("negative", "positive") and abs(sum(r["probs"]) - 1) < 1e-4 for r in rows)

    # a KB built from other training data is refused with one line
    stale = write_config(
        tmp_path / "s.yaml",
        tiny_config(tiny_teacher, tiny_csv, tmp_path / "other", method={**method, "kb": str(out / "kb")}),
    )
    proc = kdkit("distill", "--config", str(stale), "data.max_train_samples=40")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().startswith("error: knowledge base") and "different training data" in proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1
