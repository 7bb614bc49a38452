"""Causal-LM cut frontier: how many of SmolLM2-135M-Instruct's 30 layers a student keeps, against training
steps, quality and greedy-generation speed, all from one teacher cache.

    python benchmarks/lm_frontier.py [--cuts 20 15 10] [--steps 200] [--eval-every 50] [--batch-size 8]
                                     [--lr LR] [--method forward_kl] [--out runs/bench/lm_frontier] [--probe]
                                     [key=value ...]

The teacher's top-64 log-probs over dolly dev are cached once (`kdkit cache`); every cut trains from that
cache with the recipe configs/dolly_smol20l_from_smol135m_forward_kl.yaml (its learning rate unless ``--lr``;
``key=value`` overrides change anything else, e.g. ``data.train_on_prompt=false``), its layers replaced by
the cut's (``student.layers``), evaluating perplexity on response tokens every ``--eval-every`` steps and, at the
end, ROUGE-L (greedy, x100) too, on dolly valid. Each point of a run's curve is its student at that step
under the run's own cosine schedule (the learning rate not yet decayed), so a shorter run would end a
little better than the point at the same step. Finished runs are reused and interrupted ones resume.

Greedy generation speed: the teacher and each cut's final student generate exactly ``--gen-tokens`` new
tokens (end-of-sequence ignored) for the same ``--gen-prompts`` dolly valid prompts, one prompt at a time
with the KV cache, models taking turns for ``--gen-rounds`` rounds; the median tokens/s is reported.

``--probe`` prints, before any training, the perplexity of every contiguous middle block of 10, 15 or 20
layers removed: the cuts below were chosen from it (keeping the first layers and the last layers and
dropping a block from the middle loses far less than evenly spaced layers; dropping the last layers loses
most).

Prints a Markdown table (per cut: final perplexity, ROUGE-L, both relative to the teacher, steps, train
minutes, generation tokens/s and speed-up) and the curves; writes them with the raw numbers to --out.
The HTML report of the cuts (``kdkit report``: their eval curves, and quality against latency with the
teacher) goes to ``<out>/report``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from common import data_root_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "dolly_smol20l_from_smol135m_forward_kl.yaml"
LAYERS = 30


def middle_cut(keep: int, first: int) -> list[int]:
    """Keep layers [0, first) and the last ``keep - first`` layers: a contiguous middle block removed."""
    return [*range(first), *range(LAYERS - (keep - first), LAYERS)]


# layers kept per cut, chosen with --probe (perplexity of the cut student before training, dolly valid)
CUTS: dict[int, list[int]] = {
    20: middle_cut(20, 12),  # drops layers 12-21
    15: middle_cut(15, 6),  # drops layers 6-20
    10: middle_cut(10, 4),  # drops layers 4-23
}


def _base(args: argparse.Namespace) -> list[str]:
    return [
        *data_root_overrides(args.data_root),
        f"cache.dir={Path(args.out) / 'teacher-cache'}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.eval_every={args.eval_every}",
        f"train.save_every={args.eval_every}",
        f"train.seed={args.seed}",
        f"data.max_eval_samples={args.eval_samples}",
        f"method={{name: {args.method}}}",
        "eval.datasets={}",
        "eval.teacher=false",
        *([f"train.lr={args.lr}"] if args.lr is not None else []),
        *args.overrides,
    ]


def probe(args: argparse.Namespace) -> None:
    """Perplexity before training of every middle block of 10, 15 or 20 layers removed."""
    from dataclasses import replace

    from kdkit.config import load_config
    from kdkit.data.lm import load_lm_data
    from kdkit.eval.lm_evaluate import lm_metrics
    from kdkit.models import build_lm_student, load_tokenizer, with_pad_token
    from kdkit.runtime import make_accelerator

    cfg = load_config(CONFIG, [*_base(args), "eval.rouge=false", f"output_dir={args.out}/probe"])
    accelerator = make_accelerator(cfg)
    tokenizer = with_pad_token(load_tokenizer(cfg.teacher.model))
    split = load_lm_data(cfg.data).split("validation")
    print("| layers kept | layers removed | perplexity before training |\n|---:|---|---:|")
    for keep in (20, 15, 10):
        for first in range(2, keep - 1):
            layers = middle_cut(keep, first)
            student, _ = build_lm_student(
                replace(cfg.student, layers=layers, num_layers=None), cfg.teacher.model
            )
            ppl = lm_metrics(student.eval(), tokenizer, split, cfg, accelerator, vocab_size=len(tokenizer))
            gone = sorted(set(range(LAYERS)) - set(layers))
            print(f"| {keep} | {gone[0]}-{gone[-1]} | {ppl['perplexity']:.1f} |", flush=True)


def curve(run_dir: Path) -> list[dict[str, float]]:
    """The eval points of a run: step, minutes since its first log line, perplexity, ROUGE-L."""
    lines = [json.loads(x) for x in (run_dir / "logs" / "train.jsonl").read_text().splitlines() if x]
    start = lines[0]["time"]
    return [
        {
            "step": r["step"],
            "minutes": (r["time"] - start) / 60,
            "perplexity": r["eval/perplexity"],
            "rouge_l": r.get("eval/rouge_l", float("nan")),
        }
        for r in lines
        if "eval/perplexity" in r
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cuts", nargs="*", type=int, default=sorted(CUTS, reverse=True), choices=sorted(CUTS)
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--method", default="forward_kl")
    parser.add_argument("--eval-samples", type=int, default=50)
    parser.add_argument("--gen-prompts", type=int, default=8)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--gen-rounds", type=int, default=3)
    parser.add_argument(
        "--probe", action="store_true", help="only print the before-training perplexity of cuts"
    )
    parser.add_argument("--out", default="runs/bench/lm_frontier")
    parser.add_argument("--data-root", default=os.environ.get("KDKIT_DATA_ROOT"))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args()

    from kdkit.cli import _quiet_libraries
    from kdkit.commands.cache import build_cache_for_config
    from kdkit.config import load_config
    from kdkit.demo_lm import _before, generation_prompts
    from kdkit.eval.generation_speed import greedy_tokens_per_second
    from kdkit.models import load_causal_lm
    from kdkit.train.run import distill

    _quiet_libraries()
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    if args.probe:
        probe(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = _base(args)
    t0 = time.perf_counter()
    build_cache_for_config(CONFIG, base)
    print(f"teacher cache ready in {time.perf_counter() - t0:.0f} s", flush=True)

    teacher_file = out / "teacher.json"
    if not teacher_file.is_file():
        teacher, _, params, _ = _before(load_config(CONFIG, [*base, f"output_dir={out}/before"]))
        teacher_file.write_text(json.dumps({**teacher, "parameters": params}))
    teacher = json.loads(teacher_file.read_text())

    runs: dict[int, Path] = {}
    for keep in args.cuts:
        run_dir = out / f"cut-{keep}"
        runs[keep] = run_dir
        if not (run_dir / "metrics.json").is_file():
            print(f"== {keep} layers {CUTS[keep]} -> {run_dir}", flush=True)
            config = load_config(CONFIG, [*base, f"student.layers={CUTS[keep]}", f"output_dir={run_dir}"])
            distill(config, resume=True)

    config = load_config(CONFIG, base)
    prompts = generation_prompts(config, args.gen_prompts)
    models = {"teacher": load_causal_lm(config.teacher.model).eval()}
    models.update({f"cut-{k}": load_causal_lm(str(d)).eval() for k, d in runs.items()})
    speed = greedy_tokens_per_second(models, prompts, args.gen_tokens, args.gen_rounds)

    rows = []
    for keep, run_dir in runs.items():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        points = curve(run_dir)
        rows.append(
            {
                "keep": keep,
                "layers": CUTS[keep],
                "parameters": metrics["parameters"],
                "final": metrics["validation"],
                "train_minutes": metrics["train_seconds"] / 60,
                "tokens_per_s": speed[f"cut-{keep}"],
                "curve": points,
            }
        )
    result = {
        "args": vars(args),
        "lr": config.train.lr,  # what the runs used (--lr or the recipe's)
        "prompt_tokens": config.data.train_on_prompt,
        "teacher": {**teacher, "tokens_per_s": speed["teacher"]},
        "cuts": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    table = format_table(result)
    print(table)
    (out / "results.md").write_text(table + "\n")
    from kdkit.report import write_report

    page = write_report(
        list(runs.values()),
        out / "report",
        teacher_metrics={
            str(config.teacher.model): {"validation": {k: v for k, v in teacher.items() if k != "parameters"}}
        },
    )
    print(f"report (curves per cut, quality against latency): {page}")


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def format_table(result: dict) -> str:
    args, t = result["args"], result["teacher"]
    lines = [
        f"dolly valid ({args['eval_samples']} examples), {args['method']}, batch {args['batch_size']}, "
        f"lr {result.get('lr', args['lr'])}, prompt tokens trained: {result.get('prompt_tokens', False)}, seed {args['seed']}; "
        f"generation: {args['gen_prompts']} prompts x "
        f"{args['gen_tokens']} greedy tokens, batch 1, KV cache",
        "",
        "| model | parameters | perplexity (x teacher) | ROUGE-L (% of teacher) | steps | train time | "
        "generation tokens/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| teacher (30 layers) | {t['parameters'] / 1e6:.1f}M | {t['perplexity']:.2f} | {t['rouge_l']:.2f} | - | - "
        f"| {t['tokens_per_s']:.1f} | 1.00x |",
    ]
    for r in result["cuts"]:
        f = r["final"]
        lines.append(
            f"| {r['keep']} layers | {r['parameters'] / 1e6:.1f}M | {f['perplexity']:.2f} "
            f"({f['perplexity'] / t['perplexity']:.2f}x) | {f['rouge_l']:.2f} ({100 * f['rouge_l'] / t['rouge_l']:.0f}%) "
            f"| {args['steps']} | {r['train_minutes']:.0f} min | {r['tokens_per_s']:.1f} "
            f"| {r['tokens_per_s'] / t['tokens_per_s']:.2f}x |"
        )
    lines += ["", "| layers kept | step | minutes | perplexity | ROUGE-L |", "|---:|---:|---:|---:|---:|"]
    for r in result["cuts"]:
        for p in r["curve"]:
            lines.append(
                f"| {r['keep']} | {p['step']} | {p['minutes']:.0f} | {p['perplexity']:.2f} | {_num(p['rouge_l'])} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
