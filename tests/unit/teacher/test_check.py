"""The teacher check: a teacher not clearly above the majority class / mean predictor is not distilled."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kdkit.config import load_config
from kdkit.errors import KdkitError
from kdkit.teacher.check import judge, judged_metric
from kdkit.train.run import distill
from kdkit.validate import validate
from tests.conftest import tiny_config


def test_accuracy_needs_two_standard_errors_above_the_majority_class() -> None:
    labels = np.array([1] * 215 + [0] * 193)  # 408 examples, majority 52.7% (the MRPC-sized failure)
    weak = judge("classification", "accuracy", 0.531, labels)
    assert weak is not None and not weak.ok
    b = 215 / 408
    assert weak.baseline == pytest.approx(b) and weak.chance == 0.5
    assert weak.needed == pytest.approx(b + 2 * math.sqrt(b * (1 - b) / 408))
    assert "0.5310" in weak.describe() and "majority class" in weak.describe()
    good = judge("classification", "accuracy", 0.80, labels)
    assert good is not None and good.ok


def test_correlations_f1_and_mse_have_their_own_baselines() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=400).astype(np.float32)
    pearson = judge("regression", "pearson", 0.05, y)
    assert pearson is not None and pearson.baseline == 0.0 and pearson.needed == pytest.approx(0.1)
    assert not pearson.ok and "mean predictor" in pearson.describe()
    mse = judge("regression", "mse", 0.5 * float(y.var()), y)  # half the variance: well below the bar
    assert mse is not None and mse.ok and mse.baseline == pytest.approx(float(y.var()), rel=1e-5)
    assert not judge("regression", "mse", 0.99 * float(y.var()), y).ok  # lower is better, but not enough
    labels = np.array([0] * 300 + [1] * 100)
    f1 = judge("classification", "macro_f1", 0.45, labels)  # the constant predictor's macro-F1 is 0.4286
    assert f1 is not None and f1.baseline == pytest.approx(0.75 / 1.75) and not f1.ok
    assert judge("classification", "mcc", 0.3, labels).ok
    assert judge("classification", "agreement", 0.9, labels) is None  # no baseline for it
    assert judge("classification", "accuracy", 0.9, labels[:0]) is None


def test_distill_stops_before_training_from_a_teacher_at_chance(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    raw = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run")
    raw["teacher"]["check"] = True
    with pytest.raises(KdkitError, match=r"teacher's validation accuracy .* teacher.check: false") as err:
        distill(raw)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing claimed, nothing lost
    with pytest.raises(KdkitError, match=r"teacher\.check: false"):
        validate(raw)


def test_a_fine_tuned_teacher_is_judged_by_its_metrics_json(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for item in tiny_teacher.iterdir():
        (teacher / item.name).write_bytes(item.read_bytes())
    (teacher / "metrics.json").write_text(json.dumps({"validation": {"accuracy": 1.0}}))
    raw = tiny_config(teacher, tiny_csv, tmp_path / "run")
    raw["teacher"]["check"] = True
    lines = validate(raw)
    assert any(
        line.startswith("teacher check: the teacher's validation accuracy is 1.0000") for line in lines
    )
    config = load_config(raw, ["train.max_steps=1", "train.save_every=null", "train.eval_every=null"])
    distill(config)
    assert "teacher check: the teacher's validation accuracy is 1.0000" in capsys.readouterr().err


def test_positive_class_f1_is_judged_by_mcc() -> None:
    """A teacher that learnt MRPC (accuracy 0.747, MCC 0.42) sits barely above the all-positive predictor's
    F1 (0.81 with 68% positives): F1 cannot tell it from one that learnt nothing, MCC can."""
    assert judged_metric("f1") == "mcc" and judged_metric("macro_f1") == "macro_f1"
    labels = np.array([1] * 251 + [0] * 116)  # 367 pairs, 68.4% positive
    by_f1 = judge("classification", "f1", 0.8229, labels)
    assert by_f1 is not None and by_f1.baseline == pytest.approx(2 * 251 / (2 * 251 + 116)) and not by_f1.ok
    learnt = judge("classification", "mcc", 0.4226, labels, instead_of="f1")
    assert learnt is not None and learnt.ok and learnt.baseline == 0.0
    assert learnt.needed == pytest.approx(2 / math.sqrt(367))
    assert "f1 is judged by mcc" in learnt.describe()
    nothing = judge("classification", "mcc", 0.05, labels, instead_of="f1")
    assert nothing is not None and not nothing.ok


def test_a_teacher_run_with_best_metric_f1_is_checked_by_its_mcc(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for item in tiny_teacher.iterdir():
        (teacher / item.name).write_bytes(item.read_bytes())
    raw = tiny_config(teacher, tiny_csv, tmp_path / "run")
    raw["teacher"]["check"] = True
    raw["train"]["best_metric"] = "f1"
    (teacher / "metrics.json").write_text(json.dumps({"validation": {"f1": 0.99, "mcc": 0.0}}))
    with pytest.raises(KdkitError, match=r"validation mcc is 0\.0000 .*f1 is judged by mcc"):
        validate(raw)
    (teacher / "metrics.json").write_text(json.dumps({"validation": {"f1": 0.5, "mcc": 0.99}}))
    assert any(
        line.startswith("teacher check: the teacher's validation mcc is 0.9900") for line in validate(raw)
    )
