"""ReAugKD vs KD on GLUE SST-2 and MRPC, why retrieval helps or hurts, and (optionally) its latency.

    python benchmarks/glue_reaugkd.py [--tasks sst2 mrpc] [--seeds 42 43 44] [--max-train-samples N]
                                      [--epochs E] [--student-layers 0 5] [--latency] [--out DIR]
                                      [--reaugkd-set KEY=VALUE ...] [--reuse DIR]

For each task the MiniLM-L6 teacher is fine-tuned once (the shipped recipe's settings; reused from
``<teachers>/<task>``), its knowledge base is built once (`kdkit kb build`), and for every seed a student
cut from the teacher's ``--student-layers`` is distilled with vanilla KD and with ReAugKD (same data,
steps and seed; ReAugKD reuses the one KB and chooses its inference settings, ``beta: auto``, on the
validation split). Metrics are reported on data that chose nothing: SST-2's labelled test split (GLUE dev
is the validation split), and for MRPC GLUE dev as the test split with the validation split carved from
train (10%, seed 42; the teacher, the KB and the students never see it in training).

Tables: test metrics (teacher, KD, ReAugKD alone, with retrieval at the paper's fixed beta 0.5, k 16, tau
0.1, at the grid's best on validation, and at the settings ``beta: auto`` keeps), mean and standard
deviation over seeds, with the per-seed differences; and the retrieval diagnostics of
``kdkit.retrieval.diagnose`` on the test split at the run's settings. The settings are chosen again from
each saved student with ``kdkit.retrieval.choose`` as it stands, so reused runs are reported under the
current rule.

``--latency`` (SST-2): the first seed's ReAugKD student predicting dev sentences end to end, alone vs with
retrieval from the KB of the full SST-2 training set (67,349 entries) with exact, IVF and HNSW indexes, at
batch 1 and 32; median of 5 repeats. Finished runs (metrics.json) are reused.

``--reaugkd-set`` passes config overrides to the ReAugKD runs only (e.g. ``method.align_weight=1``), and
``--reuse DIR`` takes the KD runs and the KB from an earlier ``--out DIR`` of the same tasks, seeds, layers
and data, so that a ReAugKD variant is compared with the very same KD students.
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

from common import data_root_overrides, mean_sd, paired, run_once

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"sst2": ["accuracy"], "mrpc": ["f1", "accuracy"]}
# Held-out reporting: which split chooses the settings and which reports (see the module docstring).
SPLITS = {
    "sst2": [],  # validation = GLUE dev, test = the labelled test split (the recipe's)
    "mrpc": [
        "data.validation=null",
        "data.test=validation",
        "data.split={validation: 0.1, seed: 42}",
        'data.local={train: mrpc/train.tsv, test: mrpc/dev.tsv, text: "#1 String", '
        'text_pair: "#2 String", label: Quality}',
    ],
}
PAPER = {"beta": 0.5, "k": 16, "tau": 0.1}  # Zhang et al.'s fixed inference settings
DIAGNOSTICS = ["teacher_knn", "student_knn", "agree_teacher", "agree_student", "neighbour_overlap"]


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


def _paper_settings(run: Path, config: Path, overrides: list[str], metrics: list[str]) -> dict[str, float]:
    """Test metrics of a ReAugKD run's student with retrieval at the paper's fixed settings."""
    from kdkit.config import load_config
    from kdkit.data import load_task_data
    from kdkit.eval.metrics import compute_metrics
    from kdkit.retrieval.predictor import ReAugPredictor

    test = load_task_data(load_config(config, overrides).data, "classification").split("test")
    probs = ReAugPredictor.from_pretrained(run, **PAPER).predict_proba(test.texts, test.text_pairs)
    return compute_metrics("classification", probs.argmax(-1), test.labels, metrics)


def _rechoose(run: Path, config: Path, overrides: list[str], metrics: list[str]) -> dict[str, Any]:
    """A ReAugKD run's student with its inference settings chosen again on the validation split by
    ``kdkit.retrieval.choose`` as it stands (so a run trained before the rule changed is reported under the
    current rule): the choice, and test metrics at the chosen settings and at the grid's best (the settings
    the margin declined, else the chosen ones: what ``beta_confidence`` 0 would keep)."""
    import torch

    from kdkit.config import load_config
    from kdkit.data import load_task_data
    from kdkit.eval.metrics import compute_metrics
    from kdkit.retrieval.choose import choose_settings
    from kdkit.retrieval.predictor import ReAugPredictor, RetrievalSettings, combine

    cfg = load_config(config, overrides)
    data = load_task_data(cfg.data, "classification")
    predictor = ReAugPredictor.from_pretrained(run)
    assert predictor.kb is not None
    val, test = data.split("validation"), data.split("test")
    v_logits, v_emb = predictor.student_outputs(val.texts, val.text_pairs, batch_size=64)
    t_logits, t_emb = predictor.student_outputs(test.texts, test.text_pairs, batch_size=64)
    metric = json.loads((run / "metrics.json").read_text())["inference_settings"]["metric"]
    labels = torch.as_tensor(val.labels)
    chosen = choose_settings(
        v_logits, v_emb, labels, predictor.kb, "classification", metric, cfg.method.beta_confidence
    )
    grid_best = chosen.declined or {"beta": chosen.beta, "k": chosen.k, "tau": chosen.tau}  # one search

    def test_metrics(beta: float, k: int, tau: float) -> dict[str, float]:
        settings = RetrievalSettings(beta, k, tau, predictor.settings.pooling)
        probs = combine(t_logits, t_emb, predictor.kb, settings)
        return compute_metrics("classification", probs.argmax(-1).numpy(), test.labels, metrics)

    return {
        "chosen": {"settings": chosen.as_dict(), "test": test_metrics(chosen.beta, chosen.k, chosen.tau)},
        "grid_best": {
            "settings": grid_best,
            "test": test_metrics(grid_best["beta"], grid_best["k"], grid_best["tau"]),
        },
    }


def _task(task: str, args: argparse.Namespace, base: list[str], out: Path) -> tuple[list, list, dict]:
    """One task's runs; its rows of the metric and diagnostics tables, and its raw results."""
    from kdkit.train.run import distill, finetune

    split = [*base, *SPLITS[task]]
    teacher_dir = Path(args.teachers) / task
    t_over = [*split, "teacher.finetune.save_every=500"]
    if args.teacher_samples:
        t_over.append(f"data.max_train_samples={args.teacher_samples}")
    teacher = run_once(finetune, _config(task, "kd"), t_over, teacher_dir, which="teacher")
    layers = ",".join(str(x) for x in args.student_layers)
    common = [*split, f"teacher.model={teacher_dir}", "teacher.finetune=null", f"student.layers=[{layers}]"]
    if args.teacher_samples:
        common.append("teacher.check=false")  # a smoke run's teacher is not meant to be good
    if args.max_train_samples:
        common.append(f"data.max_train_samples={args.max_train_samples}")
    if args.epochs:
        common.append(f"train.epochs={args.epochs}")
    kd_out = Path(args.reuse) if args.reuse else out  # KD students and the KB: an earlier run's, if given
    kb_dir, kb_seconds = _kb(_config(task, "reaugkd"), common, kd_out / f"{task}-kb")
    print(f"{task}: teacher {teacher['test']}, KB {kb_dir} built in {kb_seconds:.0f} s", flush=True)
    rows: dict[str, list[dict]] = {"KD": [], "ReAugKD": []}
    for seed in args.seeds:
        seeded = [*common, f"train.seed={seed}"]  # one training subset for all seeds: one KB
        rows["KD"].append(run_once(distill, _config(task, "kd"), seeded, kd_out / f"{task}-kd-{seed}"))
        run = out / f"{task}-reaugkd-{seed}"
        r = run_once(
            distill, _config(task, "reaugkd"), [*seeded, f"method.kb={kb_dir}", *args.reaugkd_set], run
        )
        r["paper_settings"] = _paper_settings(run, _config(task, "reaugkd"), seeded, METRICS[task])
        r["rechosen"] = _rechoose(run, _config(task, "reaugkd"), [*seeded, *args.reaugkd_set], METRICS[task])
        rows["ReAugKD"].append(r)
        chosen = r["rechosen"]["chosen"]
        print(
            f"{task} seed {seed}: KD {rows['KD'][-1]['test']}, ReAugKD alone {r['test']}, with retrieval "
            f"{chosen['test']} ({chosen['settings']['description']}); grid's best "
            f"{r['rechosen']['grid_best']['test']}; paper's settings {r['paper_settings']}",
            flush=True,
        )
    lines, diag = [], []
    for metric in METRICS[task]:
        kd = [r["test"][metric] for r in rows["KD"]]
        alone = [r["test"][metric] for r in rows["ReAugKD"]]
        paper = [r["paper_settings"][metric] for r in rows["ReAugKD"]]
        grid = [r["rechosen"]["grid_best"]["test"][metric] for r in rows["ReAugKD"]]
        auto = [r["rechosen"]["chosen"]["test"][metric] for r in rows["ReAugKD"]]
        lines.append(
            f"| {task.upper()} {metric} | {100 * teacher['test'][metric]:.2f} | {mean_sd(kd)} | "
            f"{mean_sd(alone)} | {mean_sd(paper)} | {mean_sd(grid)} | {mean_sd(auto)} | "
            f"{paired(auto, alone)} | {paired(auto, kd)} |"
        )
    d = [r["retrieval_diagnostics"]["test"] for r in rows["ReAugKD"]]
    cells = [mean_sd([x[m] for x in d]) for m in ["teacher", "student_alone", *DIAGNOSTICS]]
    chosen = "; ".join(_short(r["rechosen"]["chosen"]["settings"]) for r in rows["ReAugKD"])
    diag.append(f"| {task.upper()} ({METRICS[task][0]}) | " + " | ".join(cells) + f" | {chosen} |")
    raw = {"teacher": teacher["test"], "runs": rows, "kb_seconds": kb_seconds}
    return lines, diag, raw


def _short(c: dict[str, Any]) -> str:
    """A choice in a table cell: its settings, with the grid's best it declined and that one's support."""
    if c.get("declined"):
        d = c["declined"]
        return f"0 (declined beta {d['beta']:g}, k {d['k']}, tau {d['tau']:g}: {c['support']:.1%})"
    support = f" ({c['support']:.1%})" if c.get("support") is not None else ""
    return f"beta {c['beta']:g}, k {c['k']}, tau {c['tau']:g}{support}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"], choices=list(METRICS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument(
        "--max-train-samples", type=int, default=None, help="student training subset (and KB)"
    )
    parser.add_argument("--epochs", type=float, default=None, help="student epochs (default: the recipe's)")
    parser.add_argument(
        "--student-layers", type=int, nargs="+", default=[0, 5], help="teacher layers the student keeps"
    )
    parser.add_argument("--latency", action="store_true", help="also time retrieval (SST-2, full-train KB)")
    parser.add_argument("--teacher-samples", type=int, default=None, help="smoke runs only; default: all")
    parser.add_argument("--latency-kb-samples", type=int, default=None, help="smoke runs only; default: all")
    parser.add_argument("--out", default="runs/bench/reaugkd")
    parser.add_argument(
        "--reaugkd-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the ReAugKD runs only"
    )
    parser.add_argument("--reuse", default=None, help="take the KD runs and the KB from this earlier --out")
    parser.add_argument(
        "--teachers", default="runs/bench/teachers-heldout", help="fine-tuned teachers, one dir per task"
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

    _quiet_libraries()
    out = Path(args.out)
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    base = [
        *data_root_overrides(args.data_root),
        "train.eval_every=null",
        "train.save_every=null",
        "eval.splits=[validation, test]",
    ]
    lines, diag, raw = [], [], {}
    for task in args.tasks:
        task_lines, task_diag, raw[task] = _task(task, args, base, out)
        lines += task_lines
        diag += task_diag
    train_note = (
        f"{args.max_train_samples:,} training examples" if args.max_train_samples else "full train sets"
    )
    table = [
        f"Test metrics (%), seeds {args.seeds}, {len(args.student_layers)}-layer students (teacher layers "
        f"{args.student_layers}) on {train_note}"
        + (f", {args.epochs:g} epochs" if args.epochs else ", the recipes' epochs")
        + (f"; ReAugKD with {' '.join(args.reaugkd_set)}" if args.reaugkd_set else "")
        + "; differences are per-seed pairs, mean ± sd",
        "",
        "| task / metric | teacher | KD | ReAugKD alone | retrieval, beta 0.5 (paper) | grid's best "
        "| retrieval, beta auto | auto - alone | auto - KD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *lines,
        "",
        "Retrieval diagnostics on the test split at the chosen settings (%, mean ± sd over seeds):",
        "",
        "| task | teacher | student alone | teacher-query kNN | student-query kNN | retrieved = teacher "
        "| retrieved = student | neighbour overlap | chosen (per seed) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *diag,
    ]
    if args.latency and "sst2" in args.tasks:
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
