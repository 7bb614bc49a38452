"""`kdkit demo` (and `make demo`): the main job on the embedded default.

The packaged MiniLM-L6 encoder is fine-tuned as the teacher on the packaged tweet-sentiment data
(3 classes; cached in KDKIT_HOME), then a 2-layer student cut from the teacher's layers [0, 5] is trained
twice on the same data, steps and seed: once with the task loss only (no KD) and once with vanilla KD.
The table compares them on the held-out test split, with latency per example at batch 32.
The HTML report of the three runs (``kdkit report``) goes to ``<output_dir>/report/``.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoModelForSequenceClassification

from kdkit.config import load_config
from kdkit.data import load_task_data
from kdkit.eval.evaluate import latency_per_example
from kdkit.io import atomic_write_json, atomic_write_text
from kdkit.models import count_parameters, load_tokenizer
from kdkit.report import write_report
from kdkit.teacher.finetuned import teacher_cache_dir
from kdkit.train.run import distill, finetune

# The embedded default; configs/tweets_minilm2l_from_minilm6_kd.yaml holds the same (a test checks).
DEMO_CONFIG: dict[str, Any] = {
    "task": "classification",
    "output_dir": "runs/demo/student-kd",
    "teacher": {
        "model": "minilm-l6",
        "max_length": 64,
        "finetune": {"max_steps": 250, "batch_size": 32, "lr": 1e-4, "warmup_ratio": 0.1, "seed": 42},
    },
    "student": {"layers": [0, 5], "max_length": 64},
    "data": {
        "train": "tweets",
        "encoding": "latin-1",
        "text": "text",
        "label": "sentiment",
        "label_names": ["negative", "neutral", "positive"],
        "split": {"validation": 0.1, "test": 0.1, "seed": 42},
        "max_eval_samples": 1000,
    },
    "method": {"name": "kd", "alpha": 0.5, "temperature": 2.0},
    "train": {"max_steps": 300, "batch_size": 32, "lr": 1e-4, "warmup_ratio": 0.1, "seed": 42},
    "eval": {"batch_size": 64, "splits": ["test"]},
}

QUICK = [
    "teacher.finetune.max_steps=8",
    "teacher.check=false",  # 8 fine-tuning steps: a smoke test of the pipeline, not a teacher worth distilling
    "train.max_steps=8",
    "data.max_train_samples=512",
    "data.max_eval_samples=128",
]


def demo_config(output_dir: Path, name: str, quick: bool) -> Any:
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["output_dir"] = str(output_dir / name)
    return load_config(raw, QUICK if quick else [])


def run_demo(output_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Train the three models, print the comparison table, write results.md/json; return the rows."""
    output_dir.mkdir(parents=True, exist_ok=True)
    print("[1/3] teacher (fine-tuned once, then cached) + [2/3] student without KD")
    nokd = finetune(demo_config(output_dir, "student-nokd", quick), which="student", overwrite=True)
    print("[3/3] student with vanilla KD")
    kd = distill(demo_config(output_dir, "student-kd", quick), overwrite=True)
    cached = teacher_cache_dir(demo_config(output_dir, "student-kd", quick))
    teacher_dir = output_dir / "teacher"
    shutil.rmtree(teacher_dir, ignore_errors=True)
    shutil.copytree(cached, teacher_dir)
    teacher_metrics = json.loads((teacher_dir / "metrics.json").read_text())

    print("measuring latency at batch 32 ...")
    texts = _test_texts(demo_config(output_dir, "student-kd", quick), 256 if not quick else 64)
    rows = []
    for label, path, metrics in [
        ("teacher (MiniLM-L6, fine-tuned)", teacher_dir, teacher_metrics),
        ("student 2L, no KD", nokd.output_dir, nokd.metrics),
        ("student 2L, KD", kd.output_dir, kd.metrics),
    ]:
        model = AutoModelForSequenceClassification.from_pretrained(path)
        tok = load_tokenizer(str(path))
        rows.append(
            {
                "model": label,
                "dir": str(path),
                "parameters": count_parameters(model),
                "accuracy": metrics["test"]["accuracy"],
                "macro_f1": metrics["test"]["macro_f1"],
                "latency_ms": 1000 * latency_per_example(model, tok, texts, batch_size=32, max_length=64),
            }
        )
    for row in rows:
        row["speedup"] = rows[0]["latency_ms"] / row["latency_ms"]
    table = format_table(rows)
    print(table)
    atomic_write_text(output_dir / "results.md", table + "\n")
    atomic_write_json(output_dir / "results.json", rows)
    print(f"outputs: {output_dir}/ (teacher, student-nokd, student-kd, results.md)")
    report = write_report([teacher_dir, nokd.output_dir, kd.output_dir], output_dir / "report")
    print(f"report: {report}")
    return {"rows": rows, "report": report}


def _test_texts(config: Any, n: int) -> list[str]:
    return load_task_data(config.data, config.task).split("test").texts[:n]


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | parameters | accuracy | macro-F1 | latency/example (batch 32) | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['accuracy']:.4f} | {r['macro_f1']:.4f} "
            f"| {r['latency_ms']:.2f} ms | {r['speedup']:.1f}x |"
        )
    return "\n".join(lines)
