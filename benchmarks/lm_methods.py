"""Causal-LM methods benchmark: SmolLM2-135M-Instruct -> 10-layer student on dolly dev, same data, steps
and seed for every method; perplexity (response tokens) and ROUGE-L (greedy) on dolly valid.

    python benchmarks/lm_methods.py [--steps 100] [--batch-size 4] [--eval-samples 50] [--out runs/bench/lm]

Rows: the teacher, the student before training, SFT (no teacher, `kdkit finetune --which student`),
forward KL, reverse KL, JSD (beta 0.5), ATKD (forward), ATKD (reverse). The recipe is
configs/dolly_smol10l_from_smol135m_forward_kl.yaml with the overrides printed by the script. Finished
runs are reused (their metrics.json) and interrupted ones resume, so the script can be re-run. Prints a
Markdown table and writes it with the raw numbers to the output dir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import data_root_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "dolly_smol10l_from_smol135m_forward_kl.yaml"
METHODS = {
    "SFT (no teacher)": None,
    "forward KL": ["method={name: forward_kl}"],
    "reverse KL": ["method={name: reverse_kl}"],
    "JSD (beta 0.5)": ["method={name: jsd, beta: 0.5}"],
    "ATKD (forward)": ["method={name: atkd, base: forward}"],
    "ATKD (reverse)": ["method={name: atkd, base: reverse}"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--eval-samples", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--only", nargs="*", help="run only these rows (names as in the table)")
    parser.add_argument("--out", default="runs/bench/lm")
    parser.add_argument(
        "--data-root",
        default=os.environ.get("KDKIT_DATA_ROOT"),
        help="a folder with local copies of the datasets (the recipes' data.local); default $KDKIT_DATA_ROOT, "
        "else the recipes' hub sources",
    )
    args = parser.parse_args()

    from kdkit.cli import _quiet_libraries
    from kdkit.config import load_config
    from kdkit.demo_lm import _before
    from kdkit.train.run import distill, finetune

    _quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [
        *data_root_overrides(args.data_root),
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.lr={args.lr}",
        f"train.save_every={max(10, args.steps // 4)}",
        f"train.mixed_precision={args.precision}",
        f"data.max_eval_samples={args.eval_samples}",
        f"eval.max_new_tokens={args.max_new_tokens}",
        "eval.datasets={}",
        "eval.teacher=false",
    ]
    print("command:", " ".join([sys.executable, *sys.argv]))
    print("recipe:", CONFIG.relative_to(ROOT), "overrides:", " ".join(base))
    rows = []
    cached = out / "before.json"
    if cached.is_file():
        rows = json.loads(cached.read_text())
    elif not args.only:
        t0 = time.perf_counter()
        teacher, before, t_params, s_params = _before(
            load_config(CONFIG, [*base, f"output_dir={out}/before"])
        )
        rows = [
            {"model": "teacher SmolLM2-135M-Instruct (30 layers)", "parameters": t_params, **teacher},
            {"model": "student 10 layers, before training", "parameters": s_params, **before},
        ]
        print(f"teacher and untrained student evaluated in {time.perf_counter() - t0:.0f} s")
        cached.write_text(json.dumps(rows, indent=1))
    for label, extra in METHODS.items():
        if args.only and label not in args.only:
            continue
        name = label.split(" (")[0].lower().replace(" ", "_") + ("_rev" if "reverse)" in label else "")
        run_dir = out / name
        config = load_config(CONFIG, [*base, *(extra or []), f"output_dir={run_dir}"])
        if (run_dir / "metrics.json").is_file():
            metrics = json.loads((run_dir / "metrics.json").read_text())
        else:
            print(f"== {label} -> {run_dir}")
            fn = finetune if extra is None else distill
            kwargs = {"which": "student"} if extra is None else {}
            metrics = fn(config, resume=True, **kwargs).metrics
        rows.append(
            {
                "model": f"student 10 layers, {label}",
                "parameters": metrics["parameters"],
                **metrics["validation"],
                "train_seconds": metrics["train_seconds"],
            }
        )
    table = format_table(rows, args)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1))


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"dolly valid ({args.eval_samples} examples), {args.steps} steps x batch {args.batch_size}, "
        f"greedy {args.max_new_tokens} new tokens",
        "",
        "| model | parameters | perplexity | ROUGE-L | train time |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        secs = f"{r['train_seconds'] / 60:.1f} min" if "train_seconds" in r else "-"
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['perplexity']:.2f} | {r['rouge_l']:.2f} | {secs} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
