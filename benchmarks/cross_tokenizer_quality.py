"""Cross-tokenizer quality: one 10-layer SmolLM2 student trained four ways on dolly, same data, steps and
seeds; bits per byte (tokenizer-free) and ROUGE-L on dolly valid, the teachers' own values beside.

    python benchmarks/cross_tokenizer_quality.py [--steps 100] [--seeds 1 2 3] [--eval-samples 50]
                                                 [--rows sft kd uld hybrid] [--out runs/bench/cross]

Rows (the recipe configs/dolly_smol10l_from_gemma270m_uld.yaml, overrides printed):

- ``sft``: no teacher (`kdkit finetune --which student`);
- ``kd``: forward KL from SmolLM2-135M-Instruct (same tokenizer), from its teacher cache (top-64);
- ``uld``: ULD from Gemma-3-270M (another tokenizer), from its teacher cache (top-64 at the teacher's
  positions: ULD compares each span's 64 largest probabilities exactly and the rest by mass);
- ``hybrid``: GOLD's hybrid (generalized JSD on the shared sub-vocabulary, ULD on the rest) from the same
  Gemma cache (the shared part coarse-grained to the shared top-64 and one tail class).

The student is the recipe's: SmolLM2-135M-Instruct cut to 10 of its 30 layers. Each row's mean and
standard deviation over the seeds, and each row's paired difference with SFT (the same seed's runs).
Teacher caches are built once per teacher (`kdkit cache`) and finished runs are reused (their
metrics.json), so the script can be re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from common import data_root_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "dolly_smol10l_from_gemma270m_uld.yaml"
ROWS = {
    "sft": ("SFT (no teacher)", []),
    "kd": ("forward KL from SmolLM2-135M (same tokenizer, cached)", ["teacher.model=smollm2-135m", "method={name: forward_kl}"]),
    "uld": ("ULD from Gemma-3-270M (cached top-64)", ["method={name: uld}"]),
    "hybrid": ("hybrid from Gemma-3-270M (cached top-64)", ["method={name: uld, hybrid: true}"]),
}  # fmt: skip
CACHED = {"kd", "uld", "hybrid"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--eval-samples", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rows", nargs="+", default=["sft", "kd", "uld"], choices=list(ROWS))
    parser.add_argument("--out", default="runs/bench/cross")
    parser.add_argument("--data-root", default=os.environ.get("KDKIT_DATA_ROOT"))
    args = parser.parse_args()

    from kdkit.cli import _quiet_libraries
    from kdkit.commands.cache import build_cache_for_config
    from kdkit.config import load_config
    from kdkit.train.run import distill, finetune

    _quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [
        *data_root_overrides(args.data_root),
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.save_every={max(10, args.steps // 4)}",
        f"data.max_train_samples={args.steps * args.batch_size}",  # one epoch: the caches cover what is used
        f"data.max_eval_samples={args.eval_samples}",
        f"eval.max_new_tokens={args.max_new_tokens}",
        "eval.teacher=false",
        "cache.top_k=64",
    ]
    print("command:", " ".join(["python", *sys.argv]))
    print("recipe:", CONFIG.relative_to(ROOT), "overrides:", " ".join(base))
    results: dict[str, list[dict[str, Any]]] = {}
    for key in args.rows:
        label, extra = ROWS[key]
        cache = [f"cache.dir={out / ('cache-' + key)}"] if key in CACHED else []
        if cache:  # built once, over the training examples of every seed's run (the whole train split)
            build_cache_for_config(CONFIG, [*base, *extra, *cache, f"output_dir={out / key}-cache-run"])
        for seed in args.seeds:
            run_dir = out / f"{key}-seed{seed}"
            if (run_dir / "metrics.json").is_file():
                metrics = json.loads((run_dir / "metrics.json").read_text())
            else:
                print(f"== {label}, seed {seed} -> {run_dir}", flush=True)
                config = load_config(
                    CONFIG, [*base, *extra, *cache, f"train.seed={seed}", f"output_dir={run_dir}"]
                )
                if key == "sft":
                    metrics = finetune(config, resume=True, which="student").metrics
                else:
                    metrics = distill(config, resume=True).metrics
            row = {"seed": seed, **metrics["validation"], "train_seconds": metrics["train_seconds"]}
            results.setdefault(key, []).append(row)
    teachers = _teachers(out, base)
    table = format_table(results, teachers, args)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"rows": results, "teachers": teachers}, indent=1))


def _teachers(out: Path, base: list[str]) -> dict[str, dict[str, float]]:
    """Both teachers' bits per byte and ROUGE-L on the same validation examples (`kdkit eval`)."""
    from kdkit.config import load_config
    from kdkit.data.lm import load_lm_data
    from kdkit.eval.lm_evaluate import lm_metrics
    from kdkit.models import load_causal_lm, load_tokenizer, with_pad_token
    from kdkit.runtime import make_accelerator

    saved = out / "teachers.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    scores = {}
    config = load_config(CONFIG, [*base, f"output_dir={out / 'eval'}"])
    split = load_lm_data(config.data).split("validation")
    for name in ("smollm2-135m", "gemma3-270m"):  # each with its own tokenizer
        tokenizer = with_pad_token(load_tokenizer(name))
        model = load_causal_lm(name).eval()
        scores[name] = lm_metrics(
            model, tokenizer, split, config, make_accelerator(config), vocab_size=len(tokenizer)
        )
    saved.write_text(json.dumps(scores, indent=1))
    return scores


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def format_table(
    results: dict[str, list[dict[str, Any]]], teachers: dict[str, dict[str, float]], args: argparse.Namespace
) -> str:
    lines = [
        f"dolly valid ({args.eval_samples} examples), {args.steps} steps x batch {args.batch_size}, seeds "
        f"{' '.join(map(str, args.seeds))}, greedy {args.max_new_tokens} new tokens; mean ± s.d. over seeds; "
        "paired: the row minus SFT with the same seed (bits per byte: lower is better)",
        "",
        "| model | bits per byte | ROUGE-L | paired bits/byte vs SFT | train time / run |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in teachers.items():
        lines.append(f"| teacher {name} | {s['bits_per_byte']:.4f} | {s['rouge_l']:.2f} | - | - |")
    sft = {r["seed"]: r for r in results.get("sft", [])}
    for key, runs in results.items():
        bpb = [r["bits_per_byte"] for r in runs]
        rouge = [r["rouge_l"] for r in runs]
        paired = [r["bits_per_byte"] - sft[r["seed"]]["bits_per_byte"] for r in runs if r["seed"] in sft]
        cell = _mean_sd(paired) if key != "sft" and paired else "-"
        minutes = statistics.mean(r["train_seconds"] for r in runs) / 60
        lines.append(
            f"| student, {ROWS[key][0]} | {_mean_sd(bpb)} | {statistics.mean(rouge):.2f} ± "
            f"{statistics.stdev(rouge) if len(rouge) > 1 else 0.0:.2f} | {cell} | {minutes:.1f} min |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
