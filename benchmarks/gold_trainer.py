"""Cross-tokenizer training steps side by side: kdkit's ULD against TRL GOLD's trainer, Gemma-3-270M teacher
(SentencePiece, 262,144 tokens) and the 10-layer SmolLM2 student (byte-level BPE, 49,152 tokens).

    python benchmarks/gold_trainer.py [--steps 3] [--warmup 1] [--batch-size 4] [--max-length 256]
                                      [--top-k 512] [--variants gold kdkit "kdkit top-k"]

The recipe configs/dolly_smol10l_from_gemma270m_uld.yaml; dolly examples tokenized once by kdkit for both
models (plain Alpaca prompts, the response and EOS), only examples that fit ``--max-length`` on both sides
(nothing cut), in ``steps + warmup`` batches of ``--batch-size``. Each variant runs in a process of its own
from the same student initialisation, AdamW (lr 2e-4, no weight decay), on these batches in this order:

- TRL GOLD (``trl.experimental.gold.GOLDTrainer``, trl 1.13.0): ``use_uld_loss``, ``use_extended_uld``
  (byte-offset alignment), ``uld_token_merge_strategy="bayesian"`` (the logits at t predict token t + 1, as
  kdkit's), no EOS skipped, CE weight 0, lmbda 0 (no student samples), fp32 (its default is bf16), its
  own ``training_step`` and optimizer. Its inputs: the student's input_ids, attention_mask, labels and byte offsets of the response
  tokens (what its ``DataCollatorForChatML`` makes), and the prompt and response texts, from which GOLD
  tokenizes the teacher's side itself (the same ids as kdkit's: checked). **GOLD refuses this teacher**: its
  byte offsets (``encode_with_byte_offsets``) accept ByteLevel BPE tokenizers only and raise
  ``NotImplementedError`` for SentencePiece; to time its step anyway, this script replaces that function
  with the same char-to-byte conversion without the ByteLevel check.
- kdkit: the ``uld`` method (``merge: last``, GOLD's rule; ``ce_weight: 0``; exact sort, chunks as in
  training) with the live teacher, through kdkit's own step function; ``kdkit top-k``: the same with
  ``top_k: --top-k``.

Reported: tokens/s (the student's non-padding tokens of the timed steps over their wall time), the peak
resident set of the process and its rise during the steps (models and data loaded before), and the loss of
each example of the first batch alone, before any update (GOLD takes the mean over an example's spans and
then over the examples, kdkit the mean over all spans of the batch: per example the two are the same
quantity). TRL is not a kdkit dependency: ``pip install --no-deps trl==1.13.0``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from common import data_root_overrides, run_children

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "dolly_smol10l_from_gemma270m_uld.yaml"
VARIANTS = ["gold", "kdkit", "kdkit top-k"]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _data(args: argparse.Namespace, top_k: int | None) -> dict[str, Any]:
    """The config, both tokenizers, the models, and the batches (the same in every variant)."""
    import torch

    from kdkit.config import load_config
    from kdkit.data.lm import load_lm_data
    from kdkit.data.lm_cross import CrossCollator, CrossDataset, encode_cross
    from kdkit.models import build_lm_student, freeze, load_causal_lm, load_tokenizer, with_pad_token

    method = f"{{name: uld, ce_weight: 0.0, merge: last, skip_eos: false, top_k: {top_k or 'null'}}}"
    overrides = [*data_root_overrides(args.data_root), f"data.max_train_samples={args.pool}"]
    config = load_config(CONFIG, [*overrides, f"method={method}", "output_dir=runs/bench/gold_trainer"])
    s_tok = with_pad_token(load_tokenizer(config.student.model))
    t_tok = with_pad_token(load_tokenizer(config.teacher.model))
    split = load_lm_data(config.data).split("train")
    enc = encode_cross(split, s_tok, t_tok, args.max_length, args.max_length, config.data.chat_template)
    fits = [
        i
        for i in range(len(enc))
        if len(enc.student.input_ids[i]) < args.max_length and len(enc.teacher_ids[i]) < args.max_length
    ]
    need = (args.steps + args.warmup) * args.batch_size
    if len(fits) < need:
        raise SystemExit(f"only {len(fits)} of {len(enc)} examples fit; raise --pool")
    data, bs = CrossDataset(enc), args.batch_size
    collate = CrossCollator(s_tok.pad_token_id, t_tok.pad_token_id, skip_eos=False, merge="last")
    chosen = fits[:need]
    items = [chosen[s : s + bs] for s in range(0, need, bs)]
    torch.manual_seed(0)
    student, _ = build_lm_student(config.student, config.teacher.model)
    teacher = freeze(load_causal_lm(config.teacher.model))
    return {
        "config": config,
        "s_tok": s_tok,
        "t_tok": t_tok,
        "student": student,
        "teacher": teacher,
        "batches": [collate([data[i] for i in idx]) for idx in items],
        "singles": [collate([data[i]]) for i in items[0]],  # the first batch, one example at a time
        "texts": [[(split.prompts[i], split.responses[i]) for i in idx] for idx in items],
    }


def _kdkit(setup: dict[str, Any]) -> tuple[Any, Any]:
    """kdkit's step (forward, loss, backward, AdamW step) and its loss of one batch without an update."""
    import torch

    from kdkit.methods import METHODS
    from kdkit.methods.base import LossContext
    from kdkit.runtime import make_accelerator
    from kdkit.teacher.source import LiveTeacher
    from kdkit.train.checkpoint import TrainerState
    from kdkit.train.loop import LoopInputs, Trainee, _accumulate

    config, student, teacher = setup["config"], setup["student"], setup["teacher"]
    accelerator = make_accelerator(config)
    ctx = LossContext(
        "causal_lm", 0, teacher.config, student.config, None, False, len(setup["s_tok"]),
        teacher_vocab_size=len(setup["t_tok"]),
    )  # fmt: skip
    loss_fn = METHODS.get("uld")(config.method, ctx)
    trainee = Trainee(student, loss_fn)
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=2e-4, weight_decay=0.0)
    trainee, optimizer = accelerator.prepare(trainee, optimizer)
    trainee.train()
    source = LiveTeacher(teacher, loss_fn, accelerator)
    inputs = LoopInputs(Path("unused"), student, loss_fn, source, [], lambda x: x, lambda m, a: {}, "loss",
                        lambda m, p: None)  # fmt: skip

    def loss_of(batch: dict[str, Any], update: bool) -> float:
        parts = _accumulate(trainee, inputs, iter([batch]), accelerator, 1, TrainerState())
        if update:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return parts["distill"]

    return (lambda b, _texts: loss_of(b, True)), (lambda b, _texts: loss_of(b, False))


def _lift_gold_bytelevel_check() -> None:
    """GOLD's ``encode_with_byte_offsets`` without its ByteLevel-only check (see the module docstring)."""
    from trl.experimental.gold import gold_trainer

    def encode_with_byte_offsets(backend: Any, texts: list[str], add_special_tokens: bool = False) -> Any:
        out = []
        for text, enc in zip(
            texts, backend.encode_batch(texts, add_special_tokens=add_special_tokens), strict=True
        ):
            to_byte = [0]
            for ch in text:
                to_byte.append(to_byte[-1] + len(ch.encode("utf-8")))
            out.append((list(enc.ids), [(to_byte[s], to_byte[e]) for s, e in enc.offsets]))
        return out

    gold_trainer.encode_with_byte_offsets = encode_with_byte_offsets


def _gold(setup: dict[str, Any], args: argparse.Namespace) -> tuple[Any, Any]:
    """GOLD's training step and its loss of one batch without an update, on kdkit's batches."""
    import torch
    from datasets import Dataset
    from trl.experimental.gold import GOLDConfig, GOLDTrainer
    from trl.experimental.gold.gold_trainer import build_teacher_inputs_from_texts
    from trl.experimental.utils import encode_with_byte_offsets

    _lift_gold_bytelevel_check()
    s_tok, t_tok = setup["s_tok"], setup["t_tok"]
    cfg = GOLDConfig(
        output_dir="runs/bench/gold_trainer/trl", use_uld_loss=True, use_extended_uld=True,
        teacher_tokenizer_name_or_path=t_tok.name_or_path, uld_token_merge_strategy="bayesian",
        uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_skip_student_eos=False,
        uld_skip_teacher_eos=False, lmbda=0.0, learning_rate=2e-4, weight_decay=0.0,
        per_device_train_batch_size=args.batch_size, max_length=args.max_length, report_to=[], use_cpu=True,
        max_completion_length=args.max_length // 2,  # generation only (lmbda 0: unused)
        save_strategy="no", logging_strategy="no", disable_dropout=True,
        bf16=False,  # GOLD's default is bf16 autocast; kdkit's runs here are fp32
    )  # fmt: skip
    dummy = Dataset.from_list(
        [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    )
    trainer = GOLDTrainer(model=setup["student"], teacher_model=setup["teacher"], args=cfg, train_dataset=dummy,
                          processing_class=s_tok)  # fmt: skip
    trainer.create_optimizer_and_scheduler(num_training_steps=args.steps + args.warmup)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which this loop replaces
    model = trainer.model
    model.train()

    def inputs_of(batch: dict[str, Any], texts: list[tuple[str, str]]) -> dict[str, Any]:
        """GOLD's collated fields from kdkit's batch: the student's byte offsets of its response tokens."""
        ids, labels = batch["student"]["input_ids"], batch["labels"]
        offsets = torch.zeros(*ids.shape, 2, dtype=torch.long)
        encs = encode_with_byte_offsets(s_tok.backend_tokenizer, [r for _, r in texts])
        for b, ((resp_ids, offs), (_, response)) in enumerate(zip(encs, texts, strict=True)):
            start = int((labels[b] != -100).nonzero()[0])
            assert ids[b, start : start + len(resp_ids)].tolist() == resp_ids, "student ids differ"
            offsets[b, start : start + len(offs)] = torch.tensor(offs)
            end = len(response.encode("utf-8"))
            offsets[b, start + len(offs)] = torch.tensor([end, end])  # the EOS, as GOLD's collator places it
        t_ids = build_teacher_inputs_from_texts(t_tok, [p for p, _ in texts], [r for _, r in texts])[0]
        kd_ids = batch["teacher"]["input_ids"]
        same = t_ids.shape == kd_ids.shape and bool(
            (t_ids == kd_ids)[batch["teacher"]["attention_mask"].bool()].all()
        )
        assert same, "GOLD's teacher ids differ from kdkit's"
        return {
            "input_ids": ids, "attention_mask": batch["student"]["attention_mask"], "labels": labels,
            "byte_offsets": offsets, "original_prompt_text": [p for p, _ in texts],
            "original_completion_text": [r for _, r in texts],
        }  # fmt: skip

    def step(batch: dict[str, Any], texts: list[tuple[str, str]]) -> float:
        loss = trainer.training_step(model, inputs_of(batch, texts))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return float(loss)

    def loss_only(batch: dict[str, Any], texts: list[tuple[str, str]]) -> float:
        with torch.no_grad():
            return float(trainer.compute_loss(model, inputs_of(batch, texts)))

    return step, loss_only


def child(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one variant in this process; returns its measurements."""
    import torch

    from kdkit.cli import _quiet_libraries

    _quiet_libraries()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.set_num_threads(args.threads) if args.threads else None
    setup = _data(args, args.top_k if variant == "kdkit top-k" else None)
    step, loss_only = _gold(setup, args) if variant == "gold" else _kdkit(setup)
    first = [loss_only(b, [t]) for b, t in zip(setup["singles"], setup["texts"][0], strict=True)]
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current set
    losses, times, tokens = [], [], 0
    for i, (batch, texts) in enumerate(zip(setup["batches"], setup["texts"], strict=True)):
        t0 = time.perf_counter()
        losses.append(step(batch, texts))
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            tokens += int(batch["student"]["attention_mask"].sum())
    peak = _status("VmHWM")
    return {
        "variant": variant,
        "tokens_per_s": tokens / sum(times),
        "seconds_per_step": sum(times) / len(times),
        "example_losses": first,
        "losses": losses,
        "peak_gib": peak / 2**30,
        "rise_gib": (peak - base) / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--pool", type=int, default=64, help="training examples read to find those that fit")
    parser.add_argument("--top-k", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--out", default="runs/bench/gold_trainer")
    parser.add_argument("--data-root", default=os.environ.get("KDKIT_DATA_ROOT"),
                        help="local dataset copies (the recipe's data.local); default $KDKIT_DATA_ROOT")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    results = run_children(__file__, args.variants)
    print(table(results, args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
    gold = results.get("gold")
    lines = [
        "",
        f"Gemma-3-270M -> SmolLM2 10 layers, dolly, batch {args.batch_size} (up to {args.max_length} tokens), "
        f"{args.steps} timed steps after {args.warmup} warm-up, CPU, fp32",
        "",
        "| variant | tokens/s | throughput / GOLD | peak memory (GiB) | rise in the steps (GiB) | rise / GOLD |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        label = f"kdkit, top_k {args.top_k}" if name == "kdkit top-k" else name
        speed = f"{r['tokens_per_s'] / gold['tokens_per_s']:.2f}x" if gold and name != "gold" else "-"
        mem = f"{100 * r['rise_gib'] / gold['rise_gib']:.0f}%" if gold and name != "gold" else "-"
        lines.append(
            f"| {label} | {r['tokens_per_s']:.1f} | {speed} | {r['peak_gib']:.2f} | {r['rise_gib']:.2f} | {mem} |"
        )
    lines += ["", "Loss of each example of the first batch alone, before any update:", ""]
    lines += ["| variant | " + " | ".join(f"example {i + 1}" for i in range(args.batch_size)) + " |"]
    lines += ["|---|" + "---:|" * args.batch_size]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.6f}" for x in r["example_losses"]) + " |")
    if gold and "kdkit" in results:
        pairs = zip(results["kdkit"]["example_losses"], gold["example_losses"], strict=True)
        rel = [abs(a - b) / abs(b) for a, b in pairs]
        lines.append(f"\nkdkit (exact) vs GOLD per example: largest relative difference {max(rel):.1e}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
