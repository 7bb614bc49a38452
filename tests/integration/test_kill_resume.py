"""Nothing lost: a real `kdkit` process killed with SIGKILL at a random point and rerun (`--resume` for
training) ends with what an uninterrupted run gives: finetune, distill, `kdkit cache`, `kdkit kb build`.
Also: corrupt checkpoints, shards and KB files are named in one line (exit 2) and the last good checkpoint
is used; a non-finite loss or weights stop the run with the step and keep the last good checkpoint.

The kill point is drawn from a printed seed (``KDKIT_KILL_SEED`` replays it, see tests/crash.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from kdkit.cli import main
from kdkit.retrieval.kb import KnowledgeBase
from kdkit.teacher.cache import shard_path
from kdkit.train.checkpoint import checkpoint_problem
from kdkit.train.loop import Trainee
from tests.conftest import tiny_config
from tests.crash import (
    assert_same_weights,
    damage,
    error_line,
    files,
    kill_rng,
    kill_when,
    log_records,
    start,
    step_reached,
    without_timing,
)
from tests.integration.test_cli_tiny import write_config
from tests.method_runs import RUNS, STEPS, TRAIN, cli_args, run_config

pytestmark = pytest.mark.integration

DELAY = 0.25  # seconds added per unit of work in the killed process
KB_METHOD = {"name": "reaugkd", "k": 4, "retrieval_k": 4, "head_epochs": 2}


def _config(teacher: Path, data: Path, out: Path, **extra: Any) -> dict[str, Any]:
    return tiny_config(teacher, data, out, train=dict(TRAIN), **extra)


@pytest.fixture
def reference(method_run: Any) -> Any:
    """The uninterrupted run of each kind (``tests.method_runs``: made once per session)."""
    names = {"finetune": "finetune-classifier", "distill": "kd"}
    return lambda kind: method_run(names.get(kind, kind))


def _assert_same_run(run: Path, ref: Path) -> None:
    """Same student, metrics, log records and files as the uninterrupted run (timing fields aside)."""
    assert_same_weights(run / "model.safetensors", ref / "model.safetensors")  # the best step's
    last = f"checkpoints/step-{STEPS}/model.safetensors"
    assert_same_weights(run / last, ref / last)  # the last step's
    assert without_timing(json.loads((run / "metrics.json").read_text())) == without_timing(
        json.loads((ref / "metrics.json").read_text())
    )
    records, ref_records = log_records(run), log_records(ref)
    assert [r["step"] for r in records] == [r["step"] for r in ref_records]  # every step once, in order
    for got, want in zip(records, ref_records, strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert files(run, skip=("logs/tb",)) == files(ref, skip=("logs/tb",))  # no leftovers of the kill


@pytest.mark.parametrize("name", list(RUNS))
def test_killed_training_resumes_to_the_same_run(
    name: str,
    tiny_teacher: Path,
    tiny_csv: Path,
    tiny_lm: Path,
    tiny_jsonl: Path,
    tmp_path: Path,
    method_run: Any,
) -> None:
    """Every registered method, both families' fine-tuning, teacher generations and on-policy samples."""
    ref = method_run(name)
    if name in ("finetune-classifier", "kd"):
        best = json.loads((ref / "metrics.json").read_text())["best_step"]
        assert 1 < best < STEPS  # the final student (best/) is neither the first nor the last step's
    rng = kill_rng(name)
    step, after = rng.randint(1, STEPS - 3), rng.uniform(0, 2 * DELAY)
    print(f"kill {after:.2f} s after checkpoint step-{step} appears")
    run = tmp_path / "run"
    assets = {
        "tiny_teacher": tiny_teacher,
        "tiny_csv": tiny_csv,
        "tiny_lm": tiny_lm,
        "tiny_jsonl": tiny_jsonl,
    }
    cfg = write_config(tmp_path / "c.yaml", run_config(name, assets, run))
    proc = start(cli_args(name, cfg), DELAY, tmp_path / "logs")
    kill_when(proc, step_reached(run, step), after, tmp_path / "logs")
    assert not (run / "metrics.json").exists()
    # the worst a kill can leave, planted so that every seed checks it: a temp checkpoint dir, best/ in
    # its temp dir, and a torn log line
    (run / "checkpoints" / f".tmp-step-{STEPS - 1}").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / f".tmp-step-{STEPS - 1}" / "model.safetensors").write_bytes(b"torn")
    (run / ".best.tmp-killed").mkdir(exist_ok=True)
    (run / ".best.tmp-killed" / "config.json").write_text("{")
    with open(run / "logs" / "train.jsonl", "a") as f:
        f.write('{"step": 99, "train/lo')
    print("left by the kill:", files(run, skip=("logs/tb",)))

    assert main([*cli_args(name, cfg), "--resume"]) == 0
    _assert_same_run(run, ref)


def test_killed_cache_build_resumes_to_the_same_cache(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    rng = kill_rng("cache")
    shard, after = rng.randint(0, 6), rng.uniform(0, 0.75 * DELAY)  # 9 shards of 8 examples
    print(f"kill {after:.2f} s after shard {shard} is done")
    root, ref = tmp_path / "cache", tmp_path / "reference"
    config = _config(tiny_teacher, tiny_csv, tmp_path / "run", cache={"dir": str(root), "shard_size": 8})
    cfg = write_config(tmp_path / "c.yaml", config)
    assert main(["cache", "--config", str(cfg), "--output", str(ref)]) == 0

    proc = start(["cache", "--config", str(cfg)], DELAY, tmp_path / "logs")
    kill_when(
        proc, lambda: shard_path(root, shard).with_suffix(".sha256").is_file(), after, tmp_path / "logs"
    )
    assert not (root / "meta.json").exists() and (root / "building.json").is_file()
    # planted: a torn temp shard, and a done shard damaged after its checksum was written
    (root / ".shard-00008.safetensors.killed").write_bytes(b"torn")
    damage(shard_path(root, shard), "truncate")
    print("left by the kill:", files(root))

    assert main(["cache", "--config", str(cfg)]) == 0
    assert json.loads((root / "meta.json").read_text()) == json.loads((ref / "meta.json").read_text())
    assert files(root) == files(ref)  # no temp files, no building.json
    for name in files(ref):
        assert (root / name).read_bytes() == (ref / name).read_bytes(), name


def test_killed_kb_build_resumes_to_the_same_kb(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    rng = kill_rng("kb build")
    chunk, after = rng.randint(0, 8), rng.uniform(0, DELAY / 2)  # 9 batches of 8: 9 chunks
    print(f"kill {after:.2f} s after chunk {chunk} of the teacher pass is saved")
    out, ref = tmp_path / "run", tmp_path / "reference"
    config = _config(tiny_teacher, tiny_csv, out, method=KB_METHOD, eval={"batch_size": 8})
    cfg = write_config(tmp_path / "c.yaml", config)
    assert main(["kb", "build", "--config", str(cfg), "--output", str(ref)]) == 0

    kb = out / "kb"
    proc = start(["kb", "build", "--config", str(cfg)], DELAY, tmp_path / "logs")
    done = shard_path(kb / ".partial", chunk).with_suffix(".sha256")
    kill_when(proc, done.is_file, after, tmp_path / "logs")
    if (kb / "meta.json").exists():  # never half a KB: either none, or one that loads
        KnowledgeBase.load(kb)
    print("left by the kill:", files(out))

    assert main(["kb", "build", "--config", str(cfg)]) == 0
    assert files(kb) == files(ref) == ["index.faiss", "kb.safetensors", "meta.json"]  # chunks gone
    for name in files(ref):
        assert (kb / name).read_bytes() == (ref / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == [".kdkit.lock", "kb"]  # no temp dirs beside it


def test_corrupt_checkpoints_are_named_and_skipped(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path, reference: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", _config(tiny_teacher, tiny_csv, run))
    assert main(["distill", "--config", str(cfg), "--stop-after", "4"]) == 0
    damage(run / "checkpoints" / "step-4" / "model.safetensors")
    capsys.readouterr()
    assert main(["distill", "--config", str(cfg), "--resume"]) == 0
    captured = capsys.readouterr()
    assert f"warning: checkpoint {run / 'checkpoints' / 'step-4'} is unusable" in captured.err
    assert "model.safetensors is corrupt (sha256 mismatch); resuming from step-3" in captured.err
    assert f"resuming from {run / 'checkpoints' / 'step-3'}" in captured.err  # notes: stderr
    _assert_same_run(run, reference("distill"))

    # none sound: both named in one line, exit 2, nothing deleted
    other = tmp_path / "other"
    cfg = write_config(tmp_path / "o.yaml", _config(tiny_teacher, tiny_csv, other))
    assert main(["distill", "--config", str(cfg), "--stop-after", "2"]) == 0
    damage(other / "checkpoints" / "step-2" / "optimizer.bin", "truncate")
    damage(other / "checkpoints" / "step-1" / "trainer_state.json", "truncate")
    capsys.readouterr()
    assert main(["distill", "--config", str(cfg), "--resume"]) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: no usable checkpoint")
    assert "step-2/optimizer.bin is corrupt" in err and "step-1/trainer_state.json is unreadable" in err
    assert sorted(p.name for p in (other / "checkpoints").iterdir()) == ["step-1", "step-2"]


def test_corrupt_cache_shard_and_meta_are_named(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cache"
    config = _config(tiny_teacher, tiny_csv, tmp_path / "run", cache={"dir": str(root), "shard_size": 16})
    cfg = write_config(tmp_path / "c.yaml", config)
    assert main(["cache", "--config", str(cfg)]) == 0
    meta = (root / "meta.json").read_text()
    damage(shard_path(root, 1), "truncate")
    capsys.readouterr()
    assert main(["distill", "--config", str(cfg)]) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: teacher cache")
    assert "shard-00001.safetensors is corrupt" in err
    assert main(["cache", "--config", str(cfg)]) == 0  # rebuilds that shard only
    assert "shard-00001.safetensors missing or corrupt; rebuilding" in capsys.readouterr().err
    assert (root / "meta.json").read_text() == meta

    damage(root / "meta.json", "truncate")
    assert main(["validate", "--config", str(cfg)]) == 2
    assert "meta.json is unreadable" in error_line(capsys.readouterr().err)


@pytest.mark.parametrize("name", ["index.faiss", "kb.safetensors", "meta.json"])
def test_corrupt_kb_files_are_named(
    name: str, tiny_teacher: Path, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb = tmp_path / "kb"
    cfg = write_config(
        tmp_path / "c.yaml", _config(tiny_teacher, tiny_csv, tmp_path / "run", method=KB_METHOD)
    )
    assert main(["kb", "build", "--config", str(cfg), "--output", str(kb)]) == 0
    damage(kb / name, "truncate")
    capsys.readouterr()
    assert main(["validate", "--config", str(cfg), f"method.kb={kb}"]) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: knowledge base") and str(kb / name) in err


@pytest.mark.parametrize("what", ["loss", "weights"])
def test_non_finite_step_stops_and_keeps_the_last_good_checkpoint(
    what: str,
    tiny_teacher: Path,
    tiny_csv: Path,
    tmp_path: Path,
    reference: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = {"n": 0}
    if what == "loss":
        real = Trainee.forward

        def nan_at_step_3(self: Trainee, batch: Any, teacher_out: Any) -> Any:
            out = real(self, batch, teacher_out)
            calls["n"] += 1
            if calls["n"] == 3:
                out.loss = out.loss * float("nan")
                out.parts = {k: v * float("nan") for k, v in out.parts.items()}
            return out

        monkeypatch.setattr(Trainee, "forward", nan_at_step_3)
    else:
        real_step = torch.optim.AdamW.step

        def inf_at_step_3(self: torch.optim.AdamW, *args: Any, **kwargs: Any) -> Any:
            result = real_step(self, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 3:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("inf"))
            return result

        monkeypatch.setattr(torch.optim.AdamW, "step", inf_at_step_3)
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", _config(tiny_teacher, tiny_csv, run))
    capsys.readouterr()
    assert main(["distill", "--config", str(cfg)]) == 2
    err = error_line(capsys.readouterr().err)
    assert ("loss is" in err) == (what == "loss") and "step 3" in err
    assert f"last good checkpoint: {run / 'checkpoints' / 'step-2'}" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert checkpoint_problem(run / "checkpoints" / "step-2") is None
    assert max(r["step"] for r in log_records(run)) == (2 if what == "loss" else 3)

    monkeypatch.undo()
    assert main(["distill", "--config", str(cfg), "--resume"]) == 0
    assert f"resuming from {run / 'checkpoints' / 'step-2'}" in capsys.readouterr().err
    _assert_same_run(run, reference("distill"))


def test_resuming_a_finished_run_changes_nothing(tmp_path: Path, reference: Any) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference("finetune"), run)
    before = {name: (run / name).read_bytes() for name in files(run)}
    config = (run / "config.yaml").read_text().replace(str(reference("finetune")), str(run))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config)
    (run / "config.yaml").write_text(config)
    before["config.yaml"] = config.encode()
    assert main(["finetune", "--config", str(cfg), "--which", "student", "--resume"]) == 0
    assert {name: (run / name).read_bytes() for name in files(run)} == before
