"""ReAugKD vs KD on GLUE SST-2 and MRPC, and the latency of retrieval at inference.

    python benchmarks/glue_reaugkd.py [--tasks sst2 mrpc] [--seeds 42 43 44] [--max-train-samples N]
                                      [--epochs E] [--out runs/bench/reaugkd]

For each task the MiniLM-L6 teacher is fine-tuned once (the shipped recipe's settings; reused from
``runs/bench/teachers/<task>``, shared with benchmarks/sst2_mixkd.py), its knowledge base is built once
(`kdkit kb build`), and for every seed a 2-layer student cut from teacher layers [0, 5] is distilled with
vanilla KD and with ReAugKD (same data, steps and seed; ReAugKD reuses the one KB). Dev metrics: KD,
ReAugKD without retrieval (the student alone) and with retrieval; mean and standard deviation over seeds.

Latency (SST-2): the ReAugKD student of the first seed predicting dev sentences end to end (tokenization
included), alone vs with retrieval from the KB of the full SST-2 training set (67,349 entries, exact inner
product), at batch 1 and 32; median of 5 repeats. Finished runs (metrics.json) are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import data_root_overrides, mean_sd, run_once

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"sst2": ["accuracy"], "mrpc": ["f1", "accuracy"]}


def _config(task: str, method: str) -> Path:
    return ROOT / "configs" / f"{task}_minilm2l_from_minilm6_{method}.yaml"


def _kb(config: Path, overrides: list[str], out: Path) -> tuple[Path, float]:
    from kdkit.retrieval.command import build_kb_for_config
    from kdkit.train.run import resolve_teacher

    if (out / "meta.json").is_file():
        return out, float("nan")
    t0 = time.perf_counter()
    build_kb_for_config(config, overrides, out, resolve_teacher=resolve_teacher)
    return out, time.perf_counter() - t0


def _latency(
    predictor: Any, texts: list[str], batch_size: int, kbs: dict[str, Any], repeats: int = 5
) -> dict:
    """Median seconds per batch of ``predict_proba`` over ``texts``: the student alone and with each KB
    index; the variants are interleaved within each repeat so that load on the machine hits them alike."""
    variants = {"alone": None, **kbs}
    timings: dict[str, list[float]] = {name: [] for name in variants}
    batches = -(-len(texts) // batch_size)
    for r in range(repeats + 1):  # the first round warms up
        for name, kb in variants.items():
            if kb is not None:
                predictor.kb = kb
            t0 = time.perf_counter()
            predictor.predict_proba(texts, batch_size=batch_size, retrieval=kb is not None)
            if r:
                timings[name].append((time.perf_counter() - t0) / batches)
    return {name: statistics.median(t) for name, t in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"], choices=list(METRICS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument(
        "--max-train-samples", type=int, default=None, help="student training subset (and KB)"
    )
    parser.add_argument("--epochs", type=float, default=None, help="student epochs (default: the recipe's)")
    parser.add_argument("--teacher-samples", type=int, default=None, help="smoke runs only; default: all")
    parser.add_argument("--latency-kb-samples", type=int, default=None, help="smoke runs only; default: all")
    parser.add_argument("--out", default="runs/bench/reaugkd")
    parser.add_argument(
        "--teachers", default="runs/bench/teachers", help="fine-tuned teachers, one dir per task"
    )
    parser.add_argument(
        "--data-root",
        default=os.environ.get("KDKIT_DATA_ROOT"),
        help="a folder with local copies of the datasets (the recipes' data.local); default $KDKIT_DATA_ROOT, "
        "else the recipes' hub sources",
    )
    args = parser.parse_args()

    import torch

    from kdkit.cli import _quiet_libraries
    from kdkit.train.run import distill, finetune

    _quiet_libraries()
    out = Path(args.out)
    print("command:", " ".join(["python", *sys.argv]))
    base = [
        *data_root_overrides(args.data_root),
        "train.eval_every=null",
        "train.save_every=null",
        "eval.splits=[validation]",
    ]
    lines, raw = [], {}
    for task in args.tasks:
        teacher_dir = Path(args.teachers) / task
        t_over = [*base, "teacher.finetune.save_every=500"]
        if args.teacher_samples:
            t_over.append(f"data.max_train_samples={args.teacher_samples}")
        teacher = run_once(finetune, _config(task, "kd"), t_over, teacher_dir, which="teacher")
        common = [*base, f"teacher.model={teacher_dir}", "teacher.finetune=null"]
        if args.max_train_samples:
            common.append(f"data.max_train_samples={args.max_train_samples}")
        if args.epochs:
            common.append(f"train.epochs={args.epochs}")
        kb_dir, kb_seconds = _kb(_config(task, "reaugkd"), common, out / f"{task}-kb")
        print(f"{task}: teacher {teacher['validation']}, KB {kb_dir} built in {kb_seconds:.0f} s")
        rows: dict[str, list[dict]] = {"KD": [], "ReAugKD": []}
        for seed in args.seeds:
            seeded = [*common, f"train.seed={seed}"]  # one training subset for all seeds: one KB
            rows["KD"].append(run_once(distill, _config(task, "kd"), seeded, out / f"{task}-kd-{seed}"))
            rows["ReAugKD"].append(
                run_once(
                    distill,
                    _config(task, "reaugkd"),
                    [*seeded, f"method.kb={kb_dir}"],
                    out / f"{task}-reaugkd-{seed}",
                )
            )
            print(
                f"{task} seed {seed}: KD {rows['KD'][-1]['validation']}, ReAugKD {rows['ReAugKD'][-1]['validation']}"
                f" / with retrieval {rows['ReAugKD'][-1]['retrieval']['validation']}"
            )
        raw[task] = {"teacher": teacher["validation"], "runs": rows, "kb_seconds": kb_seconds}
        for metric in METRICS[task]:
            kd = [r["validation"][metric] for r in rows["KD"]]
            alone = [r["validation"][metric] for r in rows["ReAugKD"]]
            retr = [r["retrieval"]["validation"][metric] for r in rows["ReAugKD"]]
            gain = 100 * (statistics.mean(retr) - statistics.mean(kd))
            lines.append(
                f"| {task.upper()} {metric} | {100 * teacher['validation'][metric]:.2f} | {mean_sd(kd)} | "
                f"{mean_sd(alone)} | {mean_sd(retr)} | {gain:+.2f} |"
            )
    train_note = (
        f"{args.max_train_samples:,} training examples" if args.max_train_samples else "full train sets"
    )
    table = [
        f"Dev metrics (%), seeds {args.seeds}, students on {train_note}"
        + (f", {args.epochs:g} epochs" if args.epochs else ", the recipes' epochs"),
        "",
        "| task / metric | teacher | KD | ReAugKD, student alone | ReAugKD, with retrieval | with retrieval - KD |",
        "|---|---:|---:|---:|---:|---:|",
        *lines,
    ]
    if "sst2" in args.tasks:
        table += ["", *_latency_table(args, out, common_sst2(base, args), torch)]
    text = "\n".join(table)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(raw, indent=2))


def common_sst2(base: list[str], args: argparse.Namespace) -> list[str]:
    """The SST-2 overrides of the latency KB: the full training set (unless a smoke run limits it)."""
    over = [*base, f"teacher.model={Path(args.teachers) / 'sst2'}", "teacher.finetune=null"]
    if args.latency_kb_samples:
        over.append(f"data.max_train_samples={args.latency_kb_samples}")
    return over


def _latency_table(args: argparse.Namespace, out: Path, overrides: list[str], torch: Any) -> list[str]:
    """Student alone vs with retrieval from the full-train KB (exact, IVF and HNSW indexes), SST-2 dev
    sentences, batch 1 and 32."""
    from kdkit.config import load_config
    from kdkit.data import load_task_data
    from kdkit.retrieval.kb import KnowledgeBase
    from kdkit.retrieval.predictor import ReAugPredictor

    same = args.max_train_samples == args.latency_kb_samples
    full_kb = out / "sst2-kb" if same else out / "sst2-kb-latency"
    _kb(_config("sst2", "reaugkd"), overrides, full_kb)
    run = out / f"sst2-reaugkd-{args.seeds[0]}"
    predictor = ReAugPredictor.from_pretrained(run)
    flat = KnowledgeBase.load(full_kb)
    kbs = {"flat": flat}
    for kind in ("ivf", "hnsw"):
        kbs[kind] = KnowledgeBase(flat.keys, flat.soft_labels, flat.projection, {"index": {"kind": kind}})
    config = load_config(_config("sst2", "reaugkd"), overrides)
    texts = load_task_data(config.data, "classification").split("validation").texts
    rows = [
        f"Latency per batch on SST-2 dev sentences, {torch.get_num_threads()} CPU threads, KB of {len(flat):,} "
        "entries (dim 384), median of 5 interleaved repeats, tokenization included; overhead over the student alone",
        "",
        "| batch | student alone (ms) | + exact (flat) | + IVF (nprobe 16) | + HNSW (M 32, ef 64) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for bs, n in ((1, 200), (32, len(texts))):
        t = _latency(predictor, texts[:n], bs, kbs)
        cells = [f"{1000 * t[k]:.2f} ms ({100 * (t[k] / t['alone'] - 1):+.1f}%)" for k in kbs]
        rows.append(f"| {bs} | {1000 * t['alone']:.2f} | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    main()
