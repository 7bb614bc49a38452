"""Causal-LM training speed and memory: student-only SFT, kdkit KD with a live teacher, kdkit KD from the
teacher cache, and TRL's GKDTrainer, on the same models, data and batches.

    python benchmarks/lm_speed.py [--steps 10] [--warmup 2] [--batch-size 4] [--max-length 256] [--top-k 64]
                                  [--device cpu] [--precision no|bf16] [--out runs/bench/lm_speed]

Teacher SmolLM2-135M-Instruct (30 layers), student its 10 layers (evenly spaced), the recipe
configs/dolly_smol10l_from_smol135m_forward_kl.yaml; dolly dev examples tokenized once by kdkit (prompt
masked), cut into ``steps + warmup`` batches of ``batch-size``; every variant trains on these batches in
this order from the same student initialisation with AdamW (lr 2e-4), one process each:

- SFT: cross-entropy on the response tokens (kdkit's ``LMTaskLoss``), no teacher;
- kdkit live: the generalized JSD method (``jsd``, beta 0 = forward KL and 0.5) with the teacher forward
  each step, kdkit's chunked loss (chunk 1024), through kdkit's own step function;
- kdkit cached: the same loss from the teacher cache (top-k log-probs, fp16, ``kdkit cache`` run first
  over exactly these examples; its build time is reported apart); the teacher is not loaded;
- TRL GKD: ``trl.experimental.gkd.GKDTrainer`` (lmbda 0: no student generations; beta 0 and 0.5) with the
  same models, its own ``training_step`` on the same batches (its inputs: input_ids, attention_mask,
  labels), and its optimizer.

Reported: tokens/s (non-padding tokens of the timed steps / their wall time; warmup steps untimed), the
time per step relative to SFT, throughput relative to TRL at the same beta, the loss of the first step
(kdkit's and TRL's equal the same divergence on the same batch), and peak memory (whole process: CPU peak
resident set, GPU ``max_memory_allocated``). TRL is not a kdkit dependency: ``pip install --no-deps
trl==1.13.0`` (its requirements are already met by kdkit's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import data_root_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "dolly_smol10l_from_smol135m_forward_kl.yaml"
VARIANTS = [
    "SFT (no teacher)",
    "kdkit live, beta 0",
    "kdkit cached, beta 0",
    "TRL GKD, beta 0",
    "kdkit live, beta 0.5",
    "kdkit cached, beta 0.5",
    "TRL GKD, beta 0.5",
]


def _overrides(args: argparse.Namespace, beta: float = 0.0) -> list[str]:
    n = (args.steps + args.warmup) * args.batch_size
    return [
        *data_root_overrides(args.data_root),
        f"data.max_train_samples={n}",
        f"teacher.max_length={args.max_length}",
        f"student.max_length={args.max_length}",
        f"method={{name: jsd, beta: {beta}, chunk_size: 1024}}",
        f"cache.dir={Path(args.out) / 'cache'}",
        f"cache.top_k={args.top_k}",
        f"train.mixed_precision={args.precision}",
        f"output_dir={Path(args.out) / 'unused'}",
    ]


def _peak_bytes(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one variant in this process; returns its measurements."""
    import torch

    from kdkit.cli import _quiet_libraries
    from kdkit.config import load_config
    from kdkit.data.lm import LMCollator, LMDataset, encode_lm, load_lm_data
    from kdkit.family.causal_lm import CausalLMFamily
    from kdkit.methods import METHODS
    from kdkit.methods.base import LossContext
    from kdkit.methods.lm_base import LMTaskLoss
    from kdkit.models import (
        build_lm_student,
        check_lm_pair,
        freeze,
        load_causal_lm,
        load_tokenizer,
        with_pad_token,
    )
    from kdkit.runtime import make_accelerator
    from kdkit.teacher.cache import TeacherCache
    from kdkit.teacher.source import CachedTeacher, LiveTeacher
    from kdkit.train.checkpoint import TrainerState
    from kdkit.train.loop import LoopInputs, Trainee, _accumulate

    _quiet_libraries()
    beta = 0.5 if variant.endswith("0.5") else 0.0
    config = load_config(CONFIG, _overrides(args, beta))
    accelerator = make_accelerator(config)
    device = accelerator.device
    name = config.teacher.model
    tokenizer = with_pad_token(load_tokenizer(name))
    torch.manual_seed(0)
    student, layers = build_lm_student(config.student, name)
    student.to(device)
    dataset = LMDataset(
        encode_lm(
            load_lm_data(config.data).split("train"), tokenizer, args.max_length, config.data.chat_template
        )
    )
    collate = LMCollator(tokenizer.pad_token_id)
    bs = args.batch_size
    batches = [collate([dataset[i] for i in range(s, s + bs)]) for s in range(0, len(dataset), bs)]
    teacher = None
    if variant.startswith(("kdkit live", "TRL")):
        teacher = freeze(load_causal_lm(name)).to(device)
    vocab = check_lm_pair(tokenizer, tokenizer, student, teacher)

    if variant.startswith("TRL"):
        step = _trl_step(student, teacher, tokenizer, beta, args)
    else:
        ctx = LossContext("causal_lm", 0, student.config, student.config, layers, True, vocab)
        if variant.startswith("SFT"):
            loss_fn = LMTaskLoss(LMTaskLoss.Config(), ctx)
        else:
            loss_fn = METHODS.get("jsd")(config.method, ctx)
        source = None
        if "cached" in variant:
            source = CachedTeacher(TeacherCache.load(config.cache.dir), CausalLMFamily().read_cache)
        elif teacher is not None:
            source = LiveTeacher(teacher, loss_fn, accelerator)
        trainee = Trainee(student, loss_fn)
        optimizer = torch.optim.AdamW(trainee.parameters(), lr=2e-4, weight_decay=0.0)
        trainee, optimizer = accelerator.prepare(trainee, optimizer)
        trainee.train()
        inputs = LoopInputs(  # what _accumulate reads: the method, the teacher source, no per-batch step
            Path(args.out),
            student,
            loss_fn,
            source,
            dataset,
            collate,
            lambda m, a: {},
            "loss",
            lambda m, p: None,
        )

        def step(batch: dict[str, Any]) -> float:
            batch = {
                k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v)
                for k, v in batch.items()
            }
            parts = _accumulate(trainee, inputs, iter([batch]), accelerator, 1, TrainerState())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return parts.get("distill", parts.get("ce", float("nan")))

    losses, times, tokens = [], [], 0
    for i, batch in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses.append(float(step(batch)))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            tokens += int(batch["student"]["attention_mask"].sum())
    return {
        "variant": variant,
        "tokens_per_s": tokens / sum(times),
        "seconds_per_step": sum(times) / len(times),
        "first_loss": losses[0],
        "peak_gib": _peak_bytes(device) / 2**30,
    }


def _trl_step(student: Any, teacher: Any, tokenizer: Any, beta: float, args: argparse.Namespace) -> Any:
    """TRL's GKDTrainer around the same models; returns a function that trains on one kdkit batch."""
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    cfg = GKDConfig(
        output_dir=str(Path(args.out) / "trl"),
        lmbda=0.0,
        beta=beta,
        seq_kd=False,
        learning_rate=2e-4,
        weight_decay=0.0,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        report_to=[],
        use_cpu=args.device == "cpu",
        bf16=args.precision == "bf16",
        disable_dropout=True,
        save_strategy="no",
        logging_strategy="no",
    )
    dummy = Dataset.from_list(
        [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    )
    trainer = GKDTrainer(
        model=student, teacher_model=teacher, args=cfg, train_dataset=dummy, processing_class=tokenizer
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=args.steps + args.warmup)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which this loop replaces
    model = trainer.model
    model.train()

    def step(batch: dict[str, Any]) -> float:
        device = trainer.accelerator.device
        inputs = {
            "input_ids": batch["student"]["input_ids"].to(device),
            "attention_mask": batch["student"]["attention_mask"].to(device),
            "labels": batch["labels"].to(device),
        }
        loss = trainer.training_step(model, inputs)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--only", nargs="*", choices=VARIANTS, help="run only these variants")
    parser.add_argument("--out", default="runs/bench/lm_speed")
    parser.add_argument(
        "--data-root",
        default=os.environ.get("KDKIT_DATA_ROOT"),
        help="a folder with local copies of the datasets (the recipes' data.local); default $KDKIT_DATA_ROOT, "
        "else the recipes' hub sources",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return

    from kdkit.cli import _quiet_libraries
    from kdkit.commands.cache import build_cache_for_config

    _quiet_libraries()
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    t0 = time.perf_counter()
    build_cache_for_config(CONFIG, _overrides(args))
    cache_seconds = time.perf_counter() - t0
    results = {}
    for variant in args.only or VARIANTS:
        proc = subprocess.run(_child_cmd(args, variant), capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{variant}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[variant]), flush=True)
    print(table(results, args, cache_seconds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))


def _child_cmd(args: argparse.Namespace, variant: str) -> list[str]:
    options = [
        "steps",
        "warmup",
        "batch_size",
        "max_length",
        "top_k",
        "device",
        "precision",
        "out",
        "data_root",
    ]
    flags = [x for o in options for x in (f"--{o.replace('_', '-')}", str(getattr(args, o)))]
    return [sys.executable, __file__, *flags, "--child", variant]


def table(results: dict[str, dict], args: argparse.Namespace, cache_seconds: float) -> str:
    sft = results.get("SFT (no teacher)")
    lines = [
        "",
        f"SmolLM2-135M-Instruct -> 10 layers, dolly dev, batch {args.batch_size} x up to {args.max_length} tokens, "
        f"{args.steps} timed steps after {args.warmup} warmup, {args.device}, precision {args.precision}; "
        f"teacher cache (top-{args.top_k}, fp16) built in {cache_seconds:.0f} s",
        "",
        "| variant | tokens/s | step time / SFT | throughput / TRL (same beta) | first-step loss | peak memory (GiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        ratio_sft = f"{r['seconds_per_step'] / sft['seconds_per_step']:.2f}x" if sft else "-"
        trl = results.get(f"TRL GKD, beta {name.rsplit('beta ', 1)[-1]}") if "beta" in name else None
        ratio_trl = (
            f"{r['tokens_per_s'] / trl['tokens_per_s']:.2f}x" if trl and not name.startswith("TRL") else "-"
        )
        lines.append(
            f"| {name} | {r['tokens_per_s']:.0f} | {ratio_sft} | {ratio_trl} | {r['first_loss']:.4f} | {r['peak_gib']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
