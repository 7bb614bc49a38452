"""Multi-process runs: `accelerate launch --multi_gpu --num_processes 2` on CPUs (gloo process group).

Two processes with batch B each give the same student as one process with batch 2B (the same global
batches, gradients averaged); only the main process writes the output dir; `kdkit cache` and
`kdkit kb build` split their teacher pass across the processes and give what one process gives.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, BertForSequenceClassification

from kdkit.commands.cache import build_cache_for_config
from kdkit.retrieval.command import build_kb_for_config
from kdkit.retrieval.kb import KnowledgeBase
from kdkit.train.run import distill, finetune, resolve_teacher
from tests.conftest import tiny_config
from tests.integration.test_cli_tiny import write_config


def launch(*args: str) -> subprocess.CompletedProcess[str]:
    """`accelerate launch` with 2 CPU processes running `kdkit ARGS`."""
    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "kdkit.cli", *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def teacher0(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher without dropout, so that runs differ only in how batches are split."""
    path = tmp_path_factory.mktemp("teacher0")
    model = BertForSequenceClassification.from_pretrained(tiny_teacher)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(path)
    for f in tiny_teacher.iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            shutil.copy(f, path / f.name)
    return path


def _config(teacher: Path, data: Path, out: Path, batch_size: int, **extra: Any) -> dict[str, Any]:
    config = tiny_config(teacher, data, out, **extra)
    config["train"].update(batch_size=batch_size, max_steps=4, eval_every=None, save_every=2)
    return config


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tb" not in p.parts}


def _assert_same_run(ddp: Path, single: Path, start: Path) -> None:
    a, b = load_file(ddp / "model.safetensors"), load_file(single / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
    emb = "bert.embeddings.word_embeddings.weight"
    assert not torch.allclose(a[emb], load_file(start / "model.safetensors")[emb])  # it did train
    assert json.loads((ddp / "metrics.json").read_text())["validation"] == pytest.approx(
        json.loads((single / "metrics.json").read_text())["validation"]
    )
    # one writer: no per-process duplicates, except the RNG state each process needs to resume
    rng = {f for f in _files(ddp) if "random_states_1" in f}
    assert rng == {"checkpoints/step-2/random_states_1.pkl", "checkpoints/step-4/random_states_1.pkl"}
    assert _files(ddp) - rng == _files(single)
    lines = (ddp / "logs" / "train.jsonl").read_text().splitlines()
    assert len(lines) == len((single / "logs" / "train.jsonl").read_text().splitlines())


@pytest.mark.parametrize("command", ["distill", "finetune"])
def test_two_processes_equal_one_with_the_global_batch(
    command: str, teacher0: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.yaml", _config(teacher0, tiny_csv, tmp_path / "ddp", batch_size=4))
    extra = ["--which", "student"] if command == "finetune" else []
    proc = launch(command, "--config", str(cfg), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"output_dir"') == 1  # the metrics are printed once, by the main process

    single = _config(teacher0, tiny_csv, tmp_path / "single", batch_size=8)
    if command == "finetune":
        finetune(single, which="student")
    else:
        distill(single)
    _assert_same_run(tmp_path / "ddp", tmp_path / "single", teacher0)


def test_cache_and_kb_build_split_the_teacher_pass(teacher0: Path, tiny_csv: Path, tmp_path: Path) -> None:
    config = _config(
        teacher0, tiny_csv, tmp_path / "run", batch_size=8, method={"name": "reaugkd", "k": 4},
        cache={"dir": str(tmp_path / "cache"), "shard_size": 16},
    )  # fmt: skip
    cfg = write_config(tmp_path / "c.yaml", config)
    proc = launch("cache", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted((tmp_path / "cache").glob("shard-*.safetensors"))
    writers = [safe_open(str(s), framework="pt").metadata()["process"] for s in shards]
    assert writers == ["0", "1", "0", "1", "0"]  # 72 examples, 5 shards, round-robin over 2 processes
    build_cache_for_config(config, output=str(tmp_path / "single-cache"))
    for shard in shards:
        torch.testing.assert_close(
            load_file(shard)["logits"], load_file(tmp_path / "single-cache" / shard.name)["logits"]
        )

    proc = launch("kb", "build", "--config", str(cfg), "--output", str(tmp_path / "kb"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_kb = KnowledgeBase.load(tmp_path / "kb")
    assert ddp_kb.meta["teacher_pass_processes"] == 2
    _, single_kb = build_kb_for_config(config, output=tmp_path / "single-kb", resolve_teacher=resolve_teacher)
    torch.testing.assert_close(ddp_kb.keys, single_kb.keys, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ddp_kb.soft_labels, single_kb.soft_labels)
    assert AutoConfig.from_pretrained(teacher0).hidden_dropout_prob == 0.0
