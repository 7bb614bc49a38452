"""Causal-LM methods on the one-hour recipe: SFT, forward KL, reverse KL, JSD and ATKD (forward and
reverse) train the 20-layer SmolLM2-135M-Instruct student, over several seeds, each compared with forward KL.

    python benchmarks/lm_methods.py [--seeds 42 43 44] [--only KEY ...] [--table] [--steps N]
                                    [--out runs/bench/lm_methods] [key=value ...]

Every run is the recipe configs/dolly_smol20l_from_smol135m_forward_kl.yaml (200 steps of 8 sequences, lr
5e-4 cosine, prompt tokens trained too) with only the method and the seed changed (``--steps`` and
``key=value`` overrides change every run alike, e.g. for a shorter sibling). The distilling methods read the
teacher's top-64 log-probs from one cache, built once (`kdkit cache`); SFT trains on the ground truth with no
teacher (`kdkit finetune --which student`). Method keys: sft, forward_kl, reverse_kl, jsd, atkd, atkd_rev.

Reported on the recipe's dolly valid examples: perplexity on response tokens and ROUGE-L of greedy answers
(x100), each mean ± standard deviation over seeds and relative to the teacher, and per method the paired
per-seed difference with forward KL (the same seed's run), with on how many seeds the method is better.

Runs checkpoint every 50 steps and finished ones are reused, so the command can be interrupted and re-run
(also in a later session). ``--only`` trains just those methods, so that two processes can share a machine
(``OMP_NUM_THREADS=1`` each on 2 cores; give the first distilling lane time to build the cache, or start
the other lane with ``--only sft``); ``--table`` trains nothing and prints the table of the finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import data_root_overrides, mean_sd, paired

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "dolly_smol20l_from_smol135m_forward_kl.yaml"
# key: (label, method override; None = SFT without a teacher)
METHODS: dict[str, tuple[str, str | None]] = {
    "sft": ("SFT (no teacher)", None),
    "forward_kl": ("forward KL", "{name: forward_kl}"),
    "reverse_kl": ("reverse KL", "{name: reverse_kl}"),
    "jsd": ("JSD (beta 0.5)", "{name: jsd, beta: 0.5}"),
    "atkd": ("ATKD (forward)", "{name: atkd, base: forward}"),
    "atkd_rev": ("ATKD (reverse)", "{name: atkd, base: reverse}"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--only", nargs="+", choices=list(METHODS), help="train only these methods; no table")
    parser.add_argument("--table", action="store_true", help="train nothing: the table of the finished runs")
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--out", default="runs/bench/lm_methods")
    parser.add_argument("--data-root", default=os.environ.get("KDKIT_DATA_ROOT"))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args()

    from kdkit.cli import _quiet_libraries
    from kdkit.commands.cache import build_cache_for_config
    from kdkit.config import load_config
    from kdkit.demo_lm import _before
    from kdkit.train.run import distill, finetune

    _quiet_libraries()
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [
        *data_root_overrides(args.data_root),
        f"cache.dir={out / 'teacher-cache'}",
        "eval.datasets={}",
        "eval.teacher=false",
        "train.keep_checkpoints=1",  # 1.1 GB each (weights and optimizer state); deleted when a run ends
        *([f"train.max_steps={args.steps}"] if args.steps else []),
        *args.overrides,
    ]
    cache_ready = False
    for key in args.only or ([] if args.table else list(METHODS)):
        label, method = METHODS[key]
        for seed in args.seeds:
            run_dir = out / f"{key}-{seed}"
            if (run_dir / "metrics.json").is_file():
                continue
            overrides = [*base, f"train.seed={seed}", f"output_dir={run_dir}"]
            print(f"== {label}, seed {seed} -> {run_dir}", flush=True)
            if method is None:
                finetune(load_config(CONFIG, overrides), resume=True, which="student")
            else:
                if not cache_ready:
                    t0 = time.perf_counter()
                    build_cache_for_config(CONFIG, base)  # reused when complete
                    print(f"teacher cache ready in {time.perf_counter() - t0:.0f} s", flush=True)
                    cache_ready = True
                distill(load_config(CONFIG, [*overrides, f"method={method}"]), resume=True)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # finished: only resuming needed them
    if args.only:
        return

    teacher_file = out / "teacher.json"
    if not teacher_file.is_file():  # the teacher and the untrained student, evaluated once
        teacher, before, t_params, _ = _before(load_config(CONFIG, [*base, f"output_dir={out}/before"]))
        teacher_file.write_text(json.dumps({"teacher": teacher, "before": before, "parameters": t_params}))
    result = {
        "args": vars(args),
        **json.loads(teacher_file.read_text()),
        "runs": {key: finished(out, key, args.seeds) for key in METHODS},
    }
    table = format_table(result)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")


def finished(out: Path, key: str, seeds: list[int]) -> dict[str, dict]:
    """The validation metrics (and train seconds) of the finished runs of one method, by seed."""
    runs = {}
    for seed in seeds:
        path = out / f"{key}-{seed}" / "metrics.json"
        if path.is_file():
            metrics = json.loads(path.read_text())
            runs[str(seed)] = {**metrics["validation"], "train_seconds": metrics["train_seconds"]}
    return runs


def format_table(result: dict) -> str:
    teacher, before = result["teacher"], result["before"]
    ppl_t, rouge_t = teacher["perplexity"], teacher["rouge_l"]
    reference = result["runs"]["forward_kl"]
    lines = [
        f"dolly valid, 20-layer student, seeds {result['args']['seeds']} (n = finished runs); perplexity on "
        "response tokens, ROUGE-L x100; paired: the method minus forward KL with the same seed",
        "",
        "| model | n | perplexity (x teacher) | ROUGE-L (% of teacher) | paired perplexity vs forward KL | "
        "paired ROUGE-L vs forward KL | train time / run |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| teacher (30 layers) | - | {ppl_t:.2f} | {rouge_t:.2f} | - | - | - |",
        f"| student before training | - | {before['perplexity']:.2f} | {before['rouge_l']:.2f} | - | - | - |",
    ]
    for key, runs in result["runs"].items():
        if not runs:
            continue
        ppl = [r["perplexity"] for r in runs.values()]
        rouge = [r["rouge_l"] for r in runs.values()]
        both = [s for s in runs if s in reference]
        vs = ["-", "-"]
        if key != "forward_kl" and both:
            a, b = runs, reference
            vs = [
                paired([a[s]["perplexity"] for s in both], [b[s]["perplexity"] for s in both], 1.0, True),
                paired([a[s]["rouge_l"] for s in both], [b[s]["rouge_l"] for s in both], 1.0),
            ]
        minutes = statistics.mean(r["train_seconds"] for r in runs.values()) / 60
        lines.append(
            f"| {METHODS[key][0]} | {len(runs)} | {mean_sd(ppl, 1.0)} ({statistics.mean(ppl) / ppl_t:.2f}x) | "
            f"{mean_sd(rouge, 1.0)} ({100 * statistics.mean(rouge) / rouge_t:.1f}%) | {vs[0]} | {vs[1]} | "
            f"{minutes:.0f} min |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
