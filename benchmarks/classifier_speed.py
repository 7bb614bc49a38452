"""Training speed of the classifier methods relative to plain fine-tuning: steps/s of KD, MixKD and
ReAugKD (and KD from the teacher cache) on the same data, batches and student.

    python benchmarks/classifier_speed.py [--steps 60] [--train-samples 5000] [--out runs/bench/clf_speed]

Recipe configs/sst2_minilm2l_from_minilm6_kd.yaml (MiniLM-L6 teacher fine-tuned on SST-2, shared with the
other benchmarks in runs/bench/teachers/sst2; 2-layer student, batch 32, max length 64) on a seeded subset
of SST-2 train; every variant runs ``steps`` optimizer steps through kdkit's own training loop with the same
seed (same batches in the same order). Speed comes from the loop's log timestamps between step 10 and the
last step, so start-up, the final evaluation and saving are excluded. ReAugKD's knowledge base and the
teacher cache are built once beforehand (their build times are printed) and are not part of the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from common import data_root_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sst2_minilm2l_from_minilm6_kd.yaml"
VARIANTS = {
    "fine-tuning (no teacher)": None,
    "KD": ["method={name: kd}"],
    "KD, teacher cache": ["method={name: kd}", "cache.dir={out}/cache"],
    "MixKD": ["method={name: mixkd}"],
    "ReAugKD": ["method={name: reaugkd, kb: {out}/kb}"],
}


def steps_per_second(run: Path) -> float:
    """From logs/train.jsonl: (last step - 10) / (time at the last step - time at step 10)."""
    rows = [json.loads(line) for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/loss" in r or "train/task" in r]
    first = next(r for r in rows if r["step"] == 10)
    last = rows[-1]
    return (last["step"] - first["step"]) / (last["time"] - first["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--train-samples", type=int, default=5000)
    parser.add_argument("--teacher", default="runs/bench/teachers/sst2")
    parser.add_argument("--out", default="runs/bench/clf_speed")
    parser.add_argument(
        "--data-root",
        default=os.environ.get("KDKIT_DATA_ROOT"),
        help="a folder with local copies of the datasets (the recipes' data.local); default $KDKIT_DATA_ROOT, "
        "else the recipes' hub sources",
    )
    args = parser.parse_args()

    from kdkit.cli import _quiet_libraries
    from kdkit.commands.cache import build_cache_for_config
    from kdkit.retrieval.command import build_kb_for_config
    from kdkit.train.run import distill, finetune, resolve_teacher

    _quiet_libraries()
    out = Path(args.out)
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    if not (Path(args.teacher) / "metrics.json").is_file():
        sys.exit(
            f"no fine-tuned teacher in {args.teacher}: run benchmarks/sst2_mixkd.py or glue_reaugkd.py first"
        )
    base = [
        *data_root_overrides(args.data_root),
        f"data.max_train_samples={args.train_samples}",
        f"teacher.model={args.teacher}",
        "teacher.finetune=null",
        "cache.dir=null",  # the live teacher, except in the row that names a cache (the recipe reads one)
        f"train.max_steps={args.steps}",
        "train.log_every=10",
        "train.eval_every=null",
        "train.save_every=null",
        "data.max_eval_samples=64",
        "eval.splits=[validation]",
        "eval.teacher=false",
    ]
    builds = {}
    t0 = time.perf_counter()
    build_kb_for_config(
        CONFIG, [*base, "method={name: reaugkd}"], out / "kb", resolve_teacher=resolve_teacher
    )
    builds["ReAugKD knowledge base"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_cache_for_config(CONFIG, [*base, f"cache.dir={out}/cache"])
    builds["teacher cache"] = time.perf_counter() - t0
    speeds = {}
    for name, extra in VARIANTS.items():
        run = out / name.split(" (")[0].replace(", ", "-").replace(" ", "-").lower()
        shutil.rmtree(run, ignore_errors=True)
        overrides = [*base, *[e.replace("{out}", str(out)) for e in extra or []], f"output_dir={run}"]
        if extra is None:
            finetune(CONFIG, overrides, which="student")
        else:
            distill(CONFIG, overrides)
        speeds[name] = steps_per_second(run)
        print(f"{name}: {speeds[name]:.2f} steps/s", flush=True)
    ft = speeds["fine-tuning (no teacher)"]
    print(
        f"\nSST-2, {args.train_samples:,}-sentence subset, MiniLM-L6 teacher -> 2-layer student, batch 32 x max 64 "
        f"tokens, steps 10-{args.steps} of one run each, CPU; built beforehand: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in builds.items())
        + "\n"
    )
    print("| method | steps/s | relative to fine-tuning |")
    print("|---|---:|---:|")
    for name, s in speeds.items():
        print(f"| {name} | {s:.2f} | {s / ft:.2f}x |")
    (out / "results.json").write_text(json.dumps({"steps_per_s": speeds, "build_seconds": builds}, indent=1))


if __name__ == "__main__":
    main()
