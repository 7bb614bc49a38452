"""The pieces that make a killed run leave nothing behind: the log cut back to a checkpoint's step, the
leftovers of atomic writes removed (never a complete file), checkpoint problems named."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from kdkit.io import atomic_dir, atomic_write_text, remove_leftovers
from kdkit.train.checkpoint import MANIFEST, STATE_FILE, checkpoint_problem
from kdkit.train.logger import RunLogger, truncate_log


def test_log_is_cut_back_to_the_resumed_step(tmp_path: Path) -> None:
    log = tmp_path / "train.jsonl"
    records = [{"step": s, "train/loss": 1.0 / s} for s in (1, 2, 2, 3, 4)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "tra')  # torn last line
    assert truncate_log(log, 2) == 3
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 2]
    assert truncate_log(log, 2) == 0  # nothing more to drop

    logger = RunLogger(tmp_path, start_step=1)  # resumed from step 1: the records of step 2 go
    logger.log(2, {"train/loss": 0.5})
    logger.close()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def test_leftovers_of_atomic_writes_are_removed_and_finished_files_kept(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "metrics.json", "{}")
    with atomic_dir(tmp_path / "best") as tmp:
        (tmp / "model.safetensors").write_bytes(b"weights")
    (tmp_path / ".best.tmp-abc").mkdir()  # what kills at different moments leave
    (tmp_path / ".best.old-123").mkdir()
    (tmp_path / ".metrics.json.xyz").write_text("{")
    (tmp_path / ".other").write_text("not ours")
    removed = remove_leftovers(tmp_path, ["best", "metrics.json"])
    assert sorted(p.name for p in removed) == [".best.old-123", ".best.tmp-abc", ".metrics.json.xyz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other", "best", "metrics.json"]
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"weights"


def test_checkpoint_problems_name_the_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "step-3"
    ckpt.mkdir()
    assert "trainer_state.json is missing" in str(checkpoint_problem(ckpt))
    (ckpt / "model.safetensors").write_bytes(b"weights")
    digest = "4c1b8e2f5df2b1ea8bfb0cd9ff6bbd3b1c93e8d0e6b4b2aa3e8e4dbd4a6f0c11"
    state = {"step": 3, MANIFEST: {"model.safetensors": digest, "optimizer.bin": digest}}
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    assert checkpoint_problem(ckpt) == f"{ckpt / 'model.safetensors'} is corrupt (sha256 mismatch)"
    state[MANIFEST]["model.safetensors"] = hashlib.sha256(b"weights").hexdigest()
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    assert checkpoint_problem(ckpt) == f"{ckpt / 'optimizer.bin'} is missing"
    del state[MANIFEST]["optimizer.bin"]
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    assert checkpoint_problem(ckpt) is None
    (ckpt / STATE_FILE).write_text(json.dumps(state)[:10])
    assert "trainer_state.json is unreadable" in str(checkpoint_problem(ckpt))


def test_atomic_writes_get_plain_permissions(tmp_path: Path) -> None:
    """mkstemp/mkdtemp make 0o600 files and 0o700 dirs; published outputs get open()/mkdir()'s modes."""
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
