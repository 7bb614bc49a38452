"""One small, seeded training run per registered method (and per family's fine-tuning), shared by the
same-results regression test and the kill-and-resume test: the same config makes the uninterrupted
reference that a killed-and-resumed run must reproduce, and whose weights and metrics must not change when
the code is refactored.

``python -m tests.method_runs`` prints the signature of every run (to record new reference values when a
change is *meant* to alter the numbers; say why in the commit).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config

STEPS = 10  # classifier runs cross an epoch boundary at 9 batches, causal-LM runs at 6
TRAIN: dict[str, Any] = {
    "max_steps": STEPS,
    "batch_size": 8,
    "lr": 1e-2,  # high enough for the best step to move mid-run
    "log_every": 1,
    "eval_every": 1,  # a new best/ may be written at any step
    "save_every": 1,
    "keep_checkpoints": 2,
}
# the runs: name -> (family, config changes). "finetune-*" runs are `kdkit finetune --which student`.
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "finetune-classifier": ("classifier", {}),
    "kd": ("classifier", {"method": {"name": "kd"}}),
    "kd-hidden": ("classifier", {"method": {"name": "kd", "hidden_weight": 0.5}}),
    "mixkd": ("classifier", {"method": {"name": "mixkd"}}),
    # beta fixed at the paper's 0.5, as when the reference was recorded (beta: auto has its own tests)
    "reaugkd": (
        "classifier",
        {"method": {"name": "reaugkd", "k": 4, "retrieval_k": 4, "head_epochs": 2, "beta": 0.5}},
    ),
    "finetune-causal_lm": ("causal_lm", {}),
    "forward_kl": ("causal_lm", {"method": {"name": "forward_kl", "chunk_size": 16}}),
    "reverse_kl": ("causal_lm", {"method": {"name": "reverse_kl", "chunk_size": 16}}),
    "jsd": ("causal_lm", {"method": {"name": "jsd", "chunk_size": 16}}),
    "skew_kl": ("causal_lm", {"method": {"name": "skew_kl", "chunk_size": 16}}),
    "tvd": ("causal_lm", {"method": {"name": "tvd", "chunk_size": 16}}),
    "atkd": ("causal_lm", {"method": {"name": "atkd", "chunk_size": 16, "ce_weight": 0.5}}),
    "uld": ("causal_lm", {"method": {"name": "uld", "chunk_size": 16, "top_k": 8}}),
    "seqkd": (
        "causal_lm",
        {"method": {"name": "forward_kl", "chunk_size": 16}, "generation": {"source": "teacher"}},
    ),
    "on_policy": (
        "causal_lm",
        {"method": {"name": "reverse_kl", "chunk_size": 16}, "generation": {"on_policy": 0.5}},
    ),
}


def lm_run_config(teacher: Path, data: Path, out: Path) -> dict[str, Any]:
    return {
        "task": "causal_lm",
        "output_dir": str(out),
        "teacher": {"model": str(teacher), "max_length": 32},
        "student": {"layers": [0, 3], "max_length": 32},
        "data": {"train": str(data), "split": {"validation": 0.25}},
        "method": {"name": "forward_kl", "chunk_size": 16},
        "train": dict(TRAIN),
        "eval": {"batch_size": 16, "splits": ["validation"], "max_new_tokens": 6},
        "generation": {"max_new_tokens": 6, "batch_size": 16, "temperature": 1.0, "seed": 3},
    }


def run_config(name: str, assets: dict[str, Path], out: Path) -> dict[str, Any]:
    """The config of run ``name``; ``assets`` holds tiny_teacher, tiny_csv, tiny_lm, tiny_jsonl."""
    family, changes = RUNS[name]
    if family == "classifier":
        config = tiny_config(assets["tiny_teacher"], assets["tiny_csv"], out, train=dict(TRAIN))
    else:
        config = lm_run_config(assets["tiny_lm"], assets["tiny_jsonl"], out)
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value} if key != "method" else dict(value)
    return config


def cli_args(name: str, config_file: Path) -> list[str]:
    if name.startswith("finetune"):
        return ["finetune", "--config", str(config_file), "--which", "student"]
    return ["distill", "--config", str(config_file)]


def weight_signature(path: Path) -> list[float]:
    """[tensor count, sum, sum of squares, a fixed cosine-weighted sum] over every tensor of a safetensors
    file (sorted by name, float64): equal up to float rounding for the same weights, far apart otherwise."""
    tensors = load_file(path)
    total = squares = weighted = 0.0
    for key in sorted(tensors):
        t = tensors[key].double().flatten()
        w = torch.cos(torch.arange(t.numel(), dtype=torch.float64) * 0.37 + len(key))
        total += float(t.sum())
        squares += float((t * t).sum())
        weighted += float((t * w).sum())
    return [float(len(tensors)), total, squares, weighted]


def numbers(metrics: Any) -> Any:
    """The numeric leaves of metrics.json (timing left out), rounded for a readable record."""
    if isinstance(metrics, dict):
        return {k: numbers(v) for k, v in sorted(metrics.items()) if k not in ("train_seconds",)}
    if isinstance(metrics, float):
        return float(f"{metrics:.8g}") if math.isfinite(metrics) else metrics
    return metrics


def signature(run: Path) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {"weights": weight_signature(run / "model.safetensors"), "metrics": numbers(metrics)}


def _record() -> None:  # pragma: no cover - a maintenance script, not a test
    import contextlib
    import os
    import sys
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kdkit.cli import main
    from tests.conftest import qa_rows, sentiment_rows, tiny_bert, tiny_llama

    root = Path(tempfile.mkdtemp(prefix="method-runs-"))
    os.environ["KDKIT_HOME"] = str(root / "home")
    csv = root / "train.csv"
    csv.write_text("\n".join(["text,label"] + [f"{t},{y}" for t, y in sentiment_rows(96)]) + "\n")
    jsonl = root / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in qa_rows(64)))
    assets = {
        "tiny_teacher": tiny_bert(root / "teacher", layers=4),
        "tiny_csv": csv,
        "tiny_lm": tiny_llama(root / "lm"),
        "tiny_jsonl": jsonl,
    }
    import yaml

    out: dict[str, Any] = {}
    for name in sys.argv[1:] or RUNS:
        cfg = root / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(run_config(name, assets, root / name)))
        with contextlib.redirect_stdout(sys.stderr):
            assert main(cli_args(name, cfg)) == 0, name
        out[name] = signature(root / name)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":  # pragma: no cover
    _record()
