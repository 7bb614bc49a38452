"""SST-2: the MiniLM-L6 teacher, a 2-layer student without KD and with KD (from the teacher cache).

    python benchmarks/sst2_kd.py [--train-samples N] [--epochs 3] [--seeds 42 43 44] [--out runs/bench/sst2]
                                 [--only {nokd,kd}]

The teacher is fine-tuned once (1 epoch on all 67,349 training sentences, or ``--train-samples``; reused
from ``--teacher-dir``, shared with benchmarks/glue_reaugkd.py). Its logits over the training set are cached
once (`kdkit cache`), so a KD step costs about what a no-KD step costs. For each seed a student cut from the
teacher's layers [0, 5] trains ``--epochs`` epochs on the same data, with the task loss only (no KD) and
with KD (alpha 0.5, T 2, from the cache), same steps and seed. Reported: dev accuracy (872 sentences; the
final model, nothing is selected on it) and labelled-test accuracy (1,821), mean ± standard deviation over
seeds, the share of the teacher's accuracy, and the paired per-seed difference KD - no KD.

Runs checkpoint every 500 steps and finished ones are reused: re-running the command after an interruption
(or in a later session) continues where it stopped. ``--only nokd`` and ``--only kd`` train one kind of
student each, so that two processes can share a machine (``OMP_NUM_THREADS=1`` each on 2 cores); the command
without ``--only`` then reads their results back and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import data_root_overrides, mean_sd, paired, run_once

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sst2_minilm2l_from_minilm6_kd.yaml"
SPLITS = ("validation", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=None, help="default: all 67,349")
    parser.add_argument("--epochs", type=float, default=3.0, help="student epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", default="runs/bench/sst2")
    parser.add_argument(
        "--only", choices=["nokd", "kd"], default=None, help="train only this kind of student; no table"
    )
    parser.add_argument(
        "--teacher-dir", default="runs/bench/teachers-heldout/sst2", help="fine-tuned teacher (shared)"
    )
    parser.add_argument(
        "--data-root",
        default=os.environ.get("KDKIT_DATA_ROOT"),
        help="a folder with local copies of the datasets (the recipes' data.local); default $KDKIT_DATA_ROOT, "
        "else the recipes' hub sources",
    )
    args = parser.parse_args()

    from kdkit.cli import _quiet_libraries
    from kdkit.commands.cache import build_cache_for_config
    from kdkit.train.run import distill, finetune

    _quiet_libraries()
    out = Path(args.out)
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    base = [
        *data_root_overrides(args.data_root),
        "train.eval_every=null",
        "train.save_every=500",
        f"eval.splits=[{', '.join(SPLITS)}]",
        *([f"data.max_train_samples={args.train_samples}"] if args.train_samples else []),
    ]
    teacher_dir = Path(args.teacher_dir)
    teacher = run_once(
        finetune, CONFIG, [*base, "teacher.finetune.save_every=500"], teacher_dir, which="teacher"
    )
    students = [*base, f"teacher.model={teacher_dir}", "teacher.finetune=null", f"train.epochs={args.epochs}"]
    if args.train_samples and args.train_samples < 1000:
        students.append("teacher.check=false")  # a smoke run's teacher is not meant to be good
    cache = [*students, f"cache.dir={out / 'teacher-cache'}"]
    if args.only != "nokd":  # a no-KD student does not read the cache
        t0 = time.perf_counter()
        build_cache_for_config(CONFIG, cache)  # reused when complete
        print(f"teacher cache ready in {time.perf_counter() - t0:.0f} s", flush=True)

    runs: dict[str, list[dict]] = {"no KD": [], "KD": []}
    for seed in args.seeds:
        seeded = [f"train.seed={seed}"]
        if args.only != "kd":
            runs["no KD"].append(
                run_once(finetune, CONFIG, [*students, *seeded], out / f"nokd-{seed}", which="student")
            )
        if args.only != "nokd":
            runs["KD"].append(run_once(distill, CONFIG, [*cache, *seeded], out / f"kd-{seed}"))
        done = [
            f"{kind} {r[-1]['validation']['accuracy']:.4f} ({r[-1]['train_seconds']:.0f} s)"
            for kind, r in runs.items()
            if r
        ]
        print(f"seed {seed}: {', '.join(done)}", flush=True)
    if args.only:
        return

    data = f"{args.train_samples:,}" if args.train_samples else "all 67,349"
    lines = [
        f"SST-2 accuracy (%), seeds {args.seeds}; teacher 1 epoch, students {args.epochs:g} "
        f"epoch{'' if args.epochs == 1 else 's'} on {data} "
        "training sentences; students' KD from the teacher cache; dev = 872 sentences, test = 1,821 (labelled)",
        "",
        "| split | teacher | no KD | KD | KD / teacher | KD - no KD (paired) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for split in SPLITS:
        t = teacher[split]["accuracy"]
        nokd = [r[split]["accuracy"] for r in runs["no KD"]]
        kd = [r[split]["accuracy"] for r in runs["KD"]]
        lines.append(
            f"| {split} | {100 * t:.2f} | {mean_sd(nokd)} | {mean_sd(kd)} | "
            f"{100 * statistics.mean(kd) / t:.1f}% | {paired(kd, nokd)} |"
        )
    secs = {k: statistics.mean(r["train_seconds"] for r in v) for k, v in runs.items()}
    lines += ["", f"Training time per student (s, mean): no KD {secs['no KD']:.0f}, KD {secs['KD']:.0f}"]
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"teacher": teacher, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
