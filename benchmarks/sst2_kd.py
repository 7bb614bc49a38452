"""SST-2 benchmark: dev accuracy of the MiniLM-L6 teacher, a 2-layer student without KD, and with KD.

    python benchmarks/sst2_kd.py [--train-samples 20000] [--seeds 42 43 44] [--out runs/bench/sst2]

The teacher is fine-tuned once (1 epoch on the training subset; cached in KDKIT_HOME), the students
(cut from the teacher's layers [0, 5]) train for 1 epoch on the same subset per seed. Prints a Markdown
table (mean and standard deviation over seeds) and writes it with the raw numbers to the output dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import data_root_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sst2_minilm2l_from_minilm6_kd.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", default="runs/bench/sst2")
    parser.add_argument(
        "--data-root",
        default=os.environ.get("KDKIT_DATA_ROOT"),
        help="a folder with local copies of the datasets (the recipes' data.local); default $KDKIT_DATA_ROOT, "
        "else the recipes' hub sources",
    )
    args = parser.parse_args()

    from kdkit.cli import _quiet_libraries
    from kdkit.config import load_config
    from kdkit.runtime import make_accelerator
    from kdkit.train.run import distill, finetune, resolve_teacher

    _quiet_libraries()
    out = Path(args.out)
    base = [
        *data_root_overrides(args.data_root),
        f"data.max_train_samples={args.train_samples}",
        "train.eval_every=null",
        "train.save_every=null",
        "eval.splits=[validation]",
    ]
    config = load_config(CONFIG, base)
    t0 = time.perf_counter()
    resolve_teacher(
        config, make_accelerator(config)
    )  # fine-tune (or reuse) the teacher before timing students
    print(f"teacher ready in {time.perf_counter() - t0:.0f} s")
    results: dict[str, list[float]] = {"teacher": [], "no KD": [], "KD": []}
    seconds: dict[str, list[float]] = {"no KD": [], "KD": []}
    for seed in args.seeds:
        common = [*base, f"train.seed={seed}"]
        t0 = time.perf_counter()
        nokd = finetune(CONFIG, [*common, f"output_dir={out}/nokd-{seed}"], which="student", overwrite=True)
        seconds["no KD"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        kd = distill(CONFIG, [*common, f"output_dir={out}/kd-{seed}"], overwrite=True)
        seconds["KD"].append(time.perf_counter() - t0)
        results["no KD"].append(nokd.metrics["validation"]["accuracy"])
        results["KD"].append(kd.metrics["validation"]["accuracy"])
        results["teacher"].append(kd.metrics["teacher"]["validation"]["accuracy"])
        print(
            f"seed {seed}: teacher {results['teacher'][-1]:.4f}  no KD {results['no KD'][-1]:.4f}  KD {results['KD'][-1]:.4f}"
        )

    def fmt(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"

    command = "python benchmarks/sst2_kd.py " + " ".join(sys.argv[1:])
    lines = [
        f"SST-2 dev accuracy (872 sentences), {len(args.seeds)} seeds {args.seeds}; teacher and students trained "
        f"1 epoch on a seeded {args.train_samples:,}-sentence subset of train. Command: `{command.strip()}`",
        "",
        "| model | parameters | dev accuracy (%) | student train time (s, mean) |",
        "|---|---:|---:|---:|",
        f"| teacher MiniLM-L6 (fine-tuned once) | {kd.metrics['teacher_parameters'] / 1e6:.1f}M | {fmt(results['teacher'][:1])} | |",
        f"| student 2L, no KD | {nokd.metrics['parameters'] / 1e6:.1f}M | {fmt(results['no KD'])} | {statistics.mean(seconds['no KD']):.0f} |",
        f"| student 2L, KD (alpha 0.5, T 2) | {kd.metrics['parameters'] / 1e6:.1f}M | {fmt(results['KD'])} | {statistics.mean(seconds['KD']):.0f} |",
    ]
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"accuracy": results, "seconds": seconds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
