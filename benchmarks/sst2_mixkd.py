"""Limited-data SST-2: no KD vs KD vs MixKD (with and without augmentation) for a 2-layer student, teacher
fine-tuned on the full train set.

    python benchmarks/sst2_mixkd.py [--sizes 100 500 2000] [--seeds 42 43 44] [--epochs 10]
                                    [--augment 2000] [--augment-sizes 100 500] [--out runs/bench/mixkd]

The MiniLM-L6 teacher is fine-tuned once on all 67,349 SST-2 training sentences (1 epoch; reused from
``--teacher-dir`` when present). For every subset size and seed, a 2-layer student cut from the teacher's
layers [0, 5] is trained on a seeded random subset of train (the seed also picks the subset) with the same
epochs: the task loss only (no KD), vanilla KD (alpha 0.5, T 2) and MixKD (defaults). For the
``--augment-sizes``, MixKD also runs with its teacher-labelled augmentation (Liang et al., Section 3.2;
``method.augment_file``): ``--augment`` unlabelled SST-2 training sentences from outside the subset
(labels dropped, seeded), which the teacher labels and the student trains on with the subset, as a user
with a pool of unlabelled in-domain text would; and KD on the same pool without mixup ("KD + aug": MixKD
with both mixup weights at 0, which is exactly CE + KD), so that the mixup's share of the gain shows. Prints SST-2 dev accuracy, mean and standard deviation over
seeds, and paired per-seed differences; writes the table and raw numbers to the output dir. Finished runs
(metrics.json) are reused, so the script can be re-run after an interruption.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from common import data_root_overrides, mean_sd, paired, run_once

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sst2_minilm2l_from_minilm6_kd.yaml"
METHODS = {"no KD": None, "KD": "{name: kd, alpha: 0.5, temperature: 2.0}", "MixKD": "{name: mixkd}"}
AUGMENTED = "MixKD + aug"
KD_AUGMENTED = "KD + aug"  # the same teacher-labelled pool without mixup: what the augmentation alone gives


def _augment_file(overrides: list[str], n: int, seed: int, path: Path) -> Path:
    """``n`` SST-2 training sentences outside the student's subset (the one ``overrides`` select), labels
    dropped, seeded: the unlabelled pool of the augmentation runs, written as a one-column TSV."""
    from kdkit.config import load_config
    from kdkit.data import load_task_data

    if path.is_file():
        return path
    data = load_config(CONFIG, overrides).data
    subset = set(load_task_data(data, "classification").split("train").texts)
    data.max_train_samples = None
    pool = sorted(set(load_task_data(data, "classification").split("train").texts) - subset)
    chosen = random.Random(seed).sample(pool, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("sentence\n" + "".join(t.replace("\t", " ").replace("\n", " ") + "\n" for t in chosen))
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=float, default=10.0, help="student epochs over its subset")
    parser.add_argument("--augment", type=int, default=2000, help="unlabelled sentences for MixKD + aug")
    parser.add_argument(
        "--augment-sizes", type=int, nargs="*", default=[100, 500], help="sizes that also run MixKD + aug"
    )
    parser.add_argument("--teacher-samples", type=int, default=None, help="smoke runs only; default: all")
    parser.add_argument("--out", default="runs/bench/mixkd")
    parser.add_argument(
        "--teacher-dir",
        default="runs/bench/teachers/sst2",
        help="fine-tuned teacher (shared with other benchmarks)",
    )
    parser.add_argument(
        "--data-root",
        default=os.environ.get("KDKIT_DATA_ROOT"),
        help="a folder with local copies of the datasets (the recipes' data.local); default $KDKIT_DATA_ROOT, "
        "else the recipes' hub sources",
    )
    args = parser.parse_args()

    from kdkit.cli import _quiet_libraries
    from kdkit.train.run import distill, finetune

    _quiet_libraries()
    out = Path(args.out)
    base = [
        *data_root_overrides(args.data_root),
        "train.eval_every=null",
        "train.save_every=null",
        "eval.splits=[validation]",
        "cache.dir=null",  # the live teacher (MixKD needs it); the recipe reads a cache of the full training set
    ]
    print("command:", " ".join(["python", *sys.argv]))
    teacher_overrides = [*base, "teacher.finetune.save_every=500"]
    if args.teacher_samples:
        teacher_overrides.append(f"data.max_train_samples={args.teacher_samples}")
    teacher_dir = Path(args.teacher_dir)
    teacher = run_once(finetune, CONFIG, teacher_overrides, teacher_dir, which="teacher")
    print(f"teacher dev accuracy {teacher['validation']['accuracy']:.4f}")
    student = [
        *base,
        f"teacher.model={teacher_dir}",
        "teacher.finetune=null",
        f"train.epochs={args.epochs}",
        *(["teacher.check=false"] if args.teacher_samples else []),  # a smoke run's teacher is not good
    ]
    acc: dict[str, dict[str, list[float]]] = {}
    for size in args.sizes:
        for seed in args.seeds:
            common = [
                *student,
                f"data.max_train_samples={size}",
                f"data.split.seed={seed}",
                f"train.seed={seed}",
            ]
            methods = dict(METHODS)
            if size in args.augment_sizes:
                pool = _augment_file(
                    common, args.augment, seed, (out / "augment" / f"{size}-{seed}.tsv").resolve()
                )
                # MixKD with both mixup weights at 0 is exactly CE + KD (kdkit.methods.mixkd), on the same pool
                methods[KD_AUGMENTED] = f"{{name: mixkd, tmkd_weight: 0, sm_weight: 0, augment_file: {pool}}}"
                methods[AUGMENTED] = f"{{name: mixkd, augment_file: {pool}}}"
            for label, method in methods.items():
                name = label.replace(" ", "").replace("+", "-").lower()
                run_dir = out / f"{name}-{size}-{seed}"
                if method is None:
                    metrics = run_once(finetune, CONFIG, common, run_dir, which="student")
                else:
                    metrics = run_once(distill, CONFIG, [*common, f"method={method}"], run_dir)
                acc.setdefault(str(size), {}).setdefault(label, []).append(metrics["validation"]["accuracy"])
                print(f"n={size} seed={seed} {label}: {metrics['validation']['accuracy']:.4f}", flush=True)

    lines = [
        f"SST-2 dev accuracy (%), 872 sentences; seeds {args.seeds}; students {args.epochs:g} epochs on their "
        f"subset; teacher (full train, 1 epoch): {100 * teacher['validation']['accuracy']:.2f}",
        "",
        f"MixKD + aug: {args.augment:,} unlabelled in-domain sentences, teacher-labelled; differences are "
        "per-seed pairs (mean ± sd, seeds ahead)",
        "",
        "| training sentences | no KD | KD | MixKD | KD + aug | MixKD + aug | KD - no KD | MixKD - KD "
        "| MixKD + aug - KD + aug |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, row in acc.items():
        aug, kd_aug = row.get(AUGMENTED), row.get(KD_AUGMENTED)
        lines.append(
            f"| {int(size):,} | {mean_sd(row['no KD'])} | {mean_sd(row['KD'])} | {mean_sd(row['MixKD'])} | "
            f"{mean_sd(kd_aug) if kd_aug else '-'} | {mean_sd(aug) if aug else '-'} | "
            f"{paired(row['KD'], row['no KD'])} | {paired(row['MixKD'], row['KD'])} | "
            f"{paired(aug, kd_aug) if aug and kd_aug else '-'} |"
        )
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(
        json.dumps({"teacher": teacher["validation"], "accuracy": acc}, indent=2)
    )


if __name__ == "__main__":
    main()
