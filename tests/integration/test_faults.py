"""Nothing lost, nothing silently wrong: output-dir safety, concurrent runs, stuck states, and every user
fault named in one line (exit 2, the file or setting named, no traceback).

Each case goes through ``kdkit.cli.main`` in this process, except where two real processes are the point
(concurrency, SIGTERM): those start ``python -m tests.crash``, the CLI slowed down at each unit of work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel

from kdkit.cli import main
from kdkit.lock import LOCK, dir_lock, path_lock
from kdkit.train import checkpoint
from kdkit.train.checkpoint import remove_temp_checkpoints
from tests.conftest import qa_rows, sentiment_rows, tiny_bert, tiny_config, tiny_lm_tokenizer
from tests.crash import error_line, files, start, step_reached
from tests.integration.test_bad_input import fails, write

pytestmark = pytest.mark.integration


def digest_tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (byte-for-byte comparison)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def cfg(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> str:
    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run")
    config["train"].update(max_steps=4, eval_every=None, save_every=1)
    return write(tmp_path / "c.yaml", config)


def users_dir(root: Path) -> Path:
    """A folder of a user's own files (data, notes, a nested thesis)."""
    (root / "thesis" / "chapters").mkdir(parents=True)
    (root / "notes.txt").write_text("my notes\n")
    (root / "data.csv").write_text("text,label\nhello,positive\n")
    (root / "thesis" / "chapters" / "one.tex").write_bytes(os.urandom(2048))
    (root / "config.yaml").write_text("not: a kdkit config\n")  # a name kdkit also writes
    return root


# --- 1. --overwrite deletes only what kdkit wrote -------------------------------------------------------


@pytest.mark.parametrize("flag", [[], ["--overwrite"], ["--resume"]])
def test_a_users_directory_survives_byte_for_byte(
    flag: list[str], cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = users_dir(tmp_path / "mine")
    before = digest_tree(mine)
    line = fails(capsys, "distill", "--config", cfg, f"output_dir={mine}", *flag)
    assert "is not empty and holds no kdkit run" in line and "notes.txt" in line
    assert digest_tree(mine) == before
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "data.csv", "notes.txt", "thesis"]


def test_overwrite_of_a_run_keeps_the_users_own_files(cfg: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["distill", "--config", cfg]) == 0
    (run / "my-analysis.ipynb").write_text("{}")
    (run / "plots").mkdir()
    (run / "plots" / "a.png").write_bytes(b"png")
    assert main(["distill", "--config", cfg, "train.lr=0.002", "--overwrite"]) == 0
    assert (run / "my-analysis.ipynb").read_text() == "{}" and (
        run / "plots" / "a.png"
    ).read_bytes() == b"png"
    assert (run / "metrics.json").is_file() and "lr: 0.002" in (run / "config.yaml").read_text()


@pytest.mark.parametrize("where", [".", "..", "/", "HOME"])
def test_shared_dirs_are_never_output_dirs(
    where: str, cfg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cwd = users_dir(tmp_path / "home" / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(cwd)
    before = digest_tree(tmp_path / "home")
    where = str(tmp_path / "home") if where == "HOME" else where
    line = fails(capsys, "distill", "--config", cfg, f"output_dir={where}", "--overwrite")
    assert "kdkit writes each run into a dir of its own" in line
    assert digest_tree(tmp_path / "home") == before
    assert not (cwd / LOCK).exists()


# --- 2. one process per dir: locks ----------------------------------------------------------------------


def test_a_second_process_on_a_running_output_dir_is_refused(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    config = tiny_config(tiny_teacher, tiny_csv, run)
    # many steps: the first run must still be training when the others (each importing kdkit) are done
    config["train"].update(max_steps=400, eval_every=None, save_every=1, log_every=1)
    cfg = write(tmp_path / "c.yaml", config)
    first = start(["distill", "--config", cfg], 1.0, tmp_path / "logs-1")  # about a second per step
    try:
        deadline = time.monotonic() + 120
        while not step_reached(run, 1)():
            assert first.poll() is None and time.monotonic() < deadline, (
                tmp_path / "logs-1" / "stderr.txt"
            ).read_text()
            time.sleep(0.05)
        # the same run again, its --resume while it trains, and an --overwrite: all refused, at once
        seconds = [
            start(["distill", "--config", cfg, *extra], 0, tmp_path / f"logs-2-{i}")
            for i, extra in enumerate(([], ["--resume"], ["--overwrite"]))
        ]
        for i, second in enumerate(seconds):
            assert second.wait(timeout=120) == 2
            line = error_line((tmp_path / f"logs-2-{i}" / "stderr.txt").read_text())
            assert f"output dir '{run}' is in use by another kdkit process (pid {first.pid} on" in line
            assert socket.gethostname() in line
        assert first.poll() is None  # the first run was not disturbed
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    # a lock left by a killed process is taken over, said on stderr
    third = start(["distill", "--config", cfg, "--resume", "--stop-after", "30"], 0, tmp_path / "logs-3")
    assert third.wait(timeout=300) == 0, (tmp_path / "logs-3" / "stderr.txt").read_text()[-2000:]
    err = (tmp_path / "logs-3" / "stderr.txt").read_text()
    assert f"taking over the lock left by process {first.pid} (no longer running)" in err
    records = [json.loads(line) for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] >= 30  # each step once, none lost


def test_cache_and_kb_dirs_are_locked_while_written(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    with dir_lock(cache, "teacher cache"):
        line = fails(capsys, "cache", "--config", cfg, f"cache.dir={cache}")
    assert f"teacher cache '{cache}' is in use by another kdkit process (pid {os.getpid()}" in line
    kb = tmp_path / "kb"
    with path_lock(kb, "knowledge base"):
        line = fails(capsys, "kb", "build", "--config", cfg, "--output", str(kb), "method.name=reaugkd")
    assert f"knowledge base '{kb}' is in use" in line
    with dir_lock(tmp_path / "run", "output dir"):  # `kb build` into a run dir takes the run's lock
        assert "in use" in fails(capsys, "kb", "build", "--config", cfg, "method.name=reaugkd")


# --- 3. --resume --overwrite ----------------------------------------------------------------------------


def test_resume_and_overwrite_together_are_refused(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["distill", "--config", cfg, "--stop-after", "2"]) == 0
    before = digest_tree(tmp_path / "run")
    line = fails(capsys, "distill", "--config", cfg, "--resume", "--overwrite")
    assert "--resume and --overwrite contradict each other" in line
    assert digest_tree(tmp_path / "run") == before  # the checkpoints are still there


# --- 4. kills while checkpoints are pruned or swapped --------------------------------------------------


def test_a_kill_while_pruning_leaves_no_half_checkpoint(
    cfg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    real = shutil.rmtree

    def killed_midway(path: Any, *args: Any, **kwargs: Any) -> None:
        victim = Path(path)
        if victim.name == ".del-step-1" and victim.is_dir():  # one file of step-1 goes, then the "kill"
            next(p for p in victim.rglob("*") if p.is_file() and p.name != "trainer_state.json").unlink()
            raise KeyboardInterrupt
        real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    assert main(["distill", "--config", cfg]) == 130
    monkeypatch.undo()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "step-1" not in names  # never half a checkpoint under its own name
    assert main(["distill", "--config", cfg, "--resume"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3", "step-4"]


def test_a_kill_between_the_renames_of_a_resaved_step_keeps_it(cfg: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["distill", "--config", cfg, "--stop-after", "3"]) == 0
    root = run / "checkpoints"
    shutil.copytree(root / "step-3", root / ".tmp-step-3")  # the new copy, complete
    os.replace(root / "step-3", root / ".old-step-3")  # the old one moved aside; then the kill
    remove_temp_checkpoints(run)
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-3"]
    assert main(["distill", "--config", cfg, "--resume"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4


# --- 5. and 6. models that cannot give right answers ------------------------------------------------------


def test_a_model_dir_without_its_tokenizer_is_refused(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["distill", "--config", cfg]) == 0
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (run / name).unlink()
    assert f"'{run}'" in fails(capsys, "predict", "--model", str(run), "--text", "a fine film")
    assert str(run) in fails(capsys, "eval", "--model", str(run), "--config", cfg)
    tiny_lm_tokenizer(run)  # a tokenizer, but not this model's: 50 tokens for 30,522 embeddings
    line = fails(capsys, "predict", "--model", str(run), "--text", "a fine film")
    assert "tokens but its model's embeddings have 30522 rows" in line and str(run) in line
    assert "30522 rows" in fails(capsys, "eval", "--model", str(run), "--config", cfg)


def test_a_model_without_a_trained_head_is_refused(
    cfg: str, tmp_path: Path, tiny_lm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base"
    torch.manual_seed(0)
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(base)
    shutil.copy(Path(tiny_bert(tmp_path / "t", layers=1)) / "tokenizer.json", base)
    shutil.copy(tmp_path / "t" / "tokenizer_config.json", base)
    for model in (base, tiny_lm):
        line = fails(capsys, "eval", "--model", str(model), "--config", cfg)
        assert "has no trained classification head" in line and str(model) in line
        line = fails(capsys, "predict", "--model", str(model), "--text", "a fine film")
        assert "has no trained classification head" in line


# --- 7. --resume after the data or the teacher changed ------------------------------------------------


def test_resume_after_the_data_changed_is_refused(
    tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.csv"
    data.write_text("\n".join(["text,label"] + [f"{t},{y}" for t, y in sentiment_rows(96)]) + "\n")
    teacher = Path(shutil.copytree(tiny_teacher, tmp_path / "teacher"))
    config = tiny_config(teacher, data, tmp_path / "run")
    config["train"].update(max_steps=4, eval_every=None, save_every=1)
    cfg = write(tmp_path / "c.yaml", config)
    assert main(["distill", "--config", cfg, "--stop-after", "2"]) == 0
    with open(data, "a") as f:
        f.write("a brand new row,positive\n")
    line = fails(capsys, "distill", "--config", cfg, "--resume")
    assert f"the data ({data}) changed since the run" in line and "--overwrite" in line
    data.write_text("\n".join(["text,label"] + [f"{t},{y}" for t, y in sentiment_rows(96)]) + "\n")
    tiny_bert(teacher, layers=4, seed=9)  # another teacher under the same name
    assert f"the teacher '{teacher}' changed" in fails(capsys, "distill", "--config", cfg, "--resume")
    assert main(["distill", "--config", cfg, "--overwrite"]) == 0


# --- 8. settings that validate must refuse -------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("student.layers=[0, 0]", "'layers' lists layer(s) [0] more than once"),
        ("student.layers=[0, 9]", "layers [9] do not exist: the model has layers 0..3"),
        ("student.config_overrides={hidden_size: -8}", "'config_overrides.hidden_size' must be > 0"),
        ("student.max_length=-1", "'max_length' must be > 0"),
    ],
)
def test_validate_refuses_impossible_students(
    override: str, expected: str, cfg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in fails(capsys, "validate", "--config", cfg, override)


def test_validate_refuses_unknown_config_overrides(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(
        capsys, "validate", "--config", cfg, "student.init=random", "student.config_overrides={hiden_size: 8}"
    )
    assert "'hiden_size' not a field of BertConfig" in line


# --- 9. an interrupted teacher fine-tune does not block other configs ------------------------------------


def test_an_interrupted_teacher_finetune_is_shared_by_other_configs(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdkit.config import load_config
    from kdkit.teacher.finetuned import teacher_cache_dir

    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "kd")
    config["teacher"]["finetune"] = {
        "max_steps": 6,
        "batch_size": 8,
        "lr": 1e-3,
        "save_every": 1,
        "log_every": 1,
    }
    config["train"].update(max_steps=2, eval_every=None, save_every=None)
    cfg = write(tmp_path / "kd.yaml", config)
    teacher_dir = teacher_cache_dir(load_config(config))
    proc = start(["distill", "--config", cfg], 0.4, tmp_path / "logs")
    try:
        deadline = time.monotonic() + 120
        while not step_reached(teacher_dir, 2)():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert not (teacher_dir / "metrics.json").exists()  # the teacher's fine-tuning was interrupted
    other = {**config, "output_dir": str(tmp_path / "mixkd"), "method": {"name": "mixkd"}}
    other["eval"] = {**config["eval"], "batch_size": 7}
    assert main(["distill", "--config", write(tmp_path / "mixkd.yaml", other)]) == 0
    records = [json.loads(line) for line in (teacher_dir / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/task" in r] == [1, 2, 3, 4, 5, 6]  # resumed, each step once
    assert main(["distill", "--config", cfg, "--overwrite"]) == 0  # the first config gets the same teacher


# --- every user fault named in one line -----------------------------------------------------------------


def test_output_dirs_that_cannot_be_written(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("x")
    line = fails(capsys, "distill", "--config", cfg, f"output_dir={tmp_path / 'a-file' / 'run'}")
    assert f"'{tmp_path / 'a-file'}' is a file" in line
    line = fails(capsys, "distill", "--config", cfg, "output_dir=/proc/kdkit-run")
    assert "'/proc/kdkit-run' cannot be created" in line


def test_a_full_disk_while_checkpointing_is_named(
    cfg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from accelerate import Accelerator

    real = Accelerator.save_state
    calls = {"n": 0}

    def full_disk(self: Accelerator, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file"
            )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    line = fails(capsys, "distill", "--config", cfg)
    assert "writing checkpoint step-3 in" in line and "free on the disk of" in line and "--resume" in line
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-1", "step-2"]
    monkeypatch.setattr("kdkit.io.free_bytes", lambda path: 1000)
    line = fails(capsys, "distill", "--config", cfg, "--resume")
    assert "not enough disk space for checkpoint step-3" in line and "MiB needed, 0 MiB free" in line


def test_an_asset_conversion_on_a_full_disk_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kdkit.assets as assets
    from kdkit.errors import KdkitError

    def no_space(gguf: Path, out: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(assets, "convert_gguf", no_space)
    with pytest.raises(
        KdkitError,
        match=r"converting the asset 'smollm2-135m' into .* failed \(No space left on device\); .* free on the disk",
    ):
        assets.converted_model_dir(assets.ASSETS["smollm2-135m"])
    assert not list((Path(os.environ["KDKIT_HOME"]) / "assets").glob("smollm2*"))  # nothing half-written


@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_damaged_weights_are_named(
    how: str, cfg: str, tmp_path: Path, tiny_lm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["distill", "--config", cfg]) == 0
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2] if how == "truncated" else b"")
    line = fails(capsys, "eval", "--model", str(run), "--config", cfg)
    assert f"the weights in model dir '{run}' are truncated or corrupt" in line
    # a converted asset in $KDKIT_HOME/assets: say how to convert it again
    converted = Path(os.environ["KDKIT_HOME"]) / "assets" / "smollm2-135m-instruct"
    shutil.copytree(tiny_lm, converted)
    (converted / "model.safetensors").write_bytes(b"")
    from kdkit.errors import KdkitError
    from kdkit.models import load_causal_lm

    with pytest.raises(KdkitError, match=f"delete '{converted}' to convert the asset again"):
        load_causal_lm("smollm2-135m")


def test_a_corrupt_metrics_json_on_resume_is_named(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["distill", "--config", cfg]) == 0
    (tmp_path / "run" / "metrics.json").write_text('{"steps": 4, "valid')
    line = fails(capsys, "distill", "--config", cfg, "--resume")
    assert f"{tmp_path / 'run' / 'metrics.json'} is unreadable" in line and "--overwrite" in line


def test_a_garbage_config_json_is_named(cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["distill", "--config", cfg]) == 0
    (run / "config.json").write_text("{garbage")
    for argv in (
        ["predict", "--model", str(run), "--text", "x"],
        ["eval", "--model", str(run), "--config", cfg],
    ):
        line = fails(capsys, *argv)
        assert f"could not load the model in local dir '{run}'" in line and "not a local dir" not in line


def test_outputs_that_point_at_the_wrong_kind_of_path(
    cfg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "is a file" in fails(capsys, "cache", "--config", cfg, "--output", str(a_file))
    import kdkit.retrieval.command as kb_command

    monkeypatch.setattr(kb_command, "_build", lambda *a: pytest.fail("the teacher pass ran before the check"))
    assert "is a file" in fails(capsys, "kb", "build", "--config", cfg, "--output", str(a_file))
    assert "is a file" in fails(capsys, "report", str(tmp_path), "--output", str(a_file))
    assert "is a directory" in fails(
        capsys, "eval", "--model", str(tmp_path), "--config", cfg, "--output", str(tmp_path)
    )
    assert "is a directory" in fails(capsys, "distill", "--config", str(tmp_path))


@pytest.mark.parametrize(("value", "kind"), [(None, None), (["a", "list"], "list")])
def test_jsonl_texts_that_are_not_texts(
    value: Any, kind: str | None, tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.jsonl"
    rows = [{"text": t, "label": y} for t, y in sentiment_rows(20)]
    rows[3]["text"] = value
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = write(tmp_path / "c.yaml", tiny_config(tiny_teacher, data, tmp_path / "run"))
    if kind is None:  # a null text is an empty one: that row is dropped and counted
        assert main(["validate", "--config", cfg]) == 0
        return
    line = fails(capsys, "validate", "--config", cfg)
    assert f"{data}: row 4, column 'text' (data.text) holds a list, not a text" in line


def test_settings_named_exactly(cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(capsys, "validate", "--config", cfg, "teacher.finetune.lr=abc")
    assert "config key 'teacher.finetune.lr' must be a number, got 'abc'" in line
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert f"data file '{empty}' is empty" in fails(
        capsys, "validate", "--config", cfg, f"data.train={empty}"
    )
    for steps in ("0", "-1"):
        assert "--stop-after must be >= 1" in fails(capsys, "distill", "--config", cfg, "--stop-after", steps)
    assert not (tmp_path / "run").exists()


def test_predict_inputs_named_exactly(cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["distill", "--config", cfg]) == 0
    run = str(tmp_path / "run")
    header_only = tmp_path / "texts.csv"
    header_only.write_text("text\n")
    assert f"--input {header_only} has no rows" in fails(
        capsys, "predict", "--model", run, "--input", str(header_only)
    )
    for value, what in (
        (None, "row 2 has no text in column 'text'"),
        (["a"], "row 2, column 'text' holds a list"),
    ):
        rows = tmp_path / "texts.jsonl"
        rows.write_text(json.dumps({"text": "a good film"}) + "\n" + json.dumps({"text": value}) + "\n")
        assert what in fails(capsys, "predict", "--model", run, "--input", str(rows))
    odd = tmp_path / "texts.odd"
    odd.write_text("text\nhello\n")
    line = fails(capsys, "predict", "--model", run, "--input", str(odd))
    assert "data.format" not in line and "extensions" in line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_is_handled_like_ctrl_c(
    sig: signal.Signals, tiny_teacher: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    config = tiny_config(tiny_teacher, tiny_csv, run)
    # many steps: the signal must land mid-run even when a busy machine delays it by seconds
    config["train"].update(max_steps=400, eval_every=None, save_every=1)
    cfg = write(tmp_path / "c.yaml", config)
    proc = start(["distill", "--config", cfg], 0.5, tmp_path / "logs")
    deadline = time.monotonic() + 120
    while not step_reached(run, 2)():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == (143 if sig == signal.SIGTERM else 130)
    err = (tmp_path / "logs" / "stderr.txt").read_text()
    assert "the checkpoints saved so far are kept: continue a training run with --resume" in err
    assert "Traceback" not in err
    assert main(["distill", "--config", cfg, "--resume"]) == 0


def test_machine_readable_output_is_alone_on_stdout(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run")
    config["teacher"]["finetune"] = {"max_steps": 2, "batch_size": 8}
    config["train"].update(max_steps=2, eval_every=None, save_every=None)
    cfg = write(tmp_path / "c.yaml", config)
    assert main(["distill", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "run"), "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "validation" in json.loads(out)  # nothing but the JSON on stdout
    assert (
        main(["predict", "--model", str(tmp_path / "run"), "--text", "a lovely film", "--text", "bad"]) == 0
    )
    assert [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()] != []


def test_lm_data_prompts_that_are_not_texts(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.jsonl"
    rows = qa_rows(8)
    rows[2]["prompt"] = {"nested": "object"}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"task": "causal_lm", "output_dir": str(tmp_path / "lm"), "teacher": {"model": str(tiny_lm)}}
    config.update(method={"name": "forward_kl"}, data={"train": str(data), "split": {"validation": 0.25}})
    line = fails(capsys, "validate", "--config", write(tmp_path / "lm.yaml", config))
    assert "row 3, column 'prompt' (data.prompt) holds a dict, not a text" in line


def test_nothing_else_in_a_run_dir(cfg: str, tmp_path: Path) -> None:
    assert main(["distill", "--config", cfg]) == 0
    names = set(files(tmp_path / "run", skip=("logs/tb", "checkpoints")))
    assert {".kdkit-run.json", ".kdkit.lock", "metrics.json", "config.yaml", "model.safetensors"} <= names
    marker = json.loads((tmp_path / "run" / ".kdkit-run.json").read_text())
    assert "model.safetensors" in marker["files"] and set(marker["inputs"]) == {"data", "teacher"}
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["max_steps"] == 4


def _hold(lock: Any, seconds: float) -> threading.Thread:
    """Hold ``lock`` (a kdkit.lock context) in another thread for ``seconds``; returns once it is held."""
    held = threading.Event()

    def run() -> None:
        with lock:
            held.set()
            time.sleep(seconds)

    thread = threading.Thread(target=run)
    thread.start()
    assert held.wait(10)
    return thread


def test_two_runs_that_need_the_same_new_teacher_take_turns(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdkit.config import load_config
    from kdkit.teacher.finetuned import teacher_cache_dir

    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run")
    config["teacher"]["finetune"] = {"max_steps": 2, "batch_size": 8}
    config["train"].update(max_steps=2, eval_every=None, save_every=None)
    teacher_dir = teacher_cache_dir(load_config(config))
    other = _hold(dir_lock(teacher_dir, "output dir"), 1.5)  # another run fine-tuning that teacher
    started = time.monotonic()
    assert main(["distill", "--config", write(tmp_path / "c.yaml", config)]) == 0
    other.join()
    assert time.monotonic() - started >= 1.0 and (teacher_dir / "metrics.json").is_file()
    assert f"waiting for kdkit process {os.getpid()}" in capsys.readouterr().err


def test_an_asset_converted_by_another_process_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdkit.assets as assets

    asset = assets.ASSETS["smollm2-135m"]
    out = Path(os.environ["KDKIT_HOME"]) / "assets" / str(asset.converted)
    converted: list[Path] = []
    monkeypatch.setattr(
        assets,
        "convert_gguf",
        lambda gguf, tmp: converted.append(tmp) or (tmp / "config.json").write_text("{}"),
    )
    other = _hold(path_lock(out, "the converted asset"), 1.0)
    assert assets.converted_model_dir(asset) == out
    other.join()
    assert len(converted) == 1 and (out / "config.json").is_file()
