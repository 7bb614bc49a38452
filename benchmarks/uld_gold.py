"""kdkit's cross-tokenizer ULD loss against TRL GOLD's ``ULDLoss``: the same value, time and peak memory.

    python benchmarks/uld_gold.py [--batch-size 4] [--prompt 32] [--response 224] [--vocab 49152]
                                  [--teacher-vocab 262144] [--dim 576] [--teacher-dim 640] [--top-k 512]
                                  [--scale 4] [--repeats 3]

Inputs (fp32, seeded): per example a prompt and a response of the same lengths for both models; final
hidden states of both (B, prompt + response, D) and LM heads (V, D), the student's requiring grad, scaled so
that the logits' standard deviation is ``--scale`` (4: peaked distributions, as a trained LM's). Both
tokenizations cover the response with the same byte offsets (token k covers bytes [k, k + 1)), so every
aligned span is one token on each side: the case where GOLD's and kdkit's merge rules coincide.

- TRL GOLD (``trl.experimental.gold.gold_trainer.ULDLoss``, trl 1.13.0): ``use_extended_uld`` (byte-offset
  alignment), ``uld_token_merge_strategy="bayesian"`` (the logits at position t predict token t + 1, as
  kdkit), cross-entropy weight 0, distillation weight 1, temperatures 1, no EOS skipped. Its trainer
  computes both models' full logits (B, L, V), then loops over the examples in Python.
- kdkit: ``aligned_cross_tokenizer_loss`` from hidden states and LM heads, chunks of
  ``chunk_size * 32768 / max(V, Vt)`` spans (training's default, chunk_size 1024), exact sort (top_k None),
  and with ``--top-k`` as well.

Both losses are the mean over examples of the mean over their spans (kdkit takes the mean over all spans of
the batch; with equal response lengths the two are the same). Reported: the loss value, the median wall
time of forward + backward over ``--repeats`` runs after one warm-up, and the peak resident set above the
inputs during one forward + backward (one fresh process per variant; the high-water mark is reset through
/proc/self/clear_refs). TRL is not a kdkit dependency: ``pip install --no-deps trl==1.13.0``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from common import run_children

VARIANTS = ["gold", "kdkit", "kdkit top-k"]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """Loss, median seconds and peak bytes of one variant (runs in the child process)."""
    import torch

    from kdkit.losses.uld import aligned_cross_tokenizer_loss

    torch.manual_seed(0)
    torch.set_num_threads(args.threads) if args.threads else None
    b, p, r = args.batch_size, args.prompt, args.response
    length = p + r
    hs = torch.randn(b, length, args.dim).requires_grad_(True)
    ws = (args.scale / args.dim**0.5 * torch.randn(args.vocab, args.dim)).requires_grad_(True)
    ht, wt = (
        torch.randn(b, length, args.teacher_dim),
        args.scale / args.teacher_dim**0.5 * torch.randn(args.teacher_vocab, args.teacher_dim),
    )
    s_ids = torch.randint(0, args.vocab, (b, length))
    t_ids = torch.randint(0, args.teacher_vocab, (b, length))
    labels_s = s_ids.clone()
    labels_s[:, :p] = -100
    labels_t = t_ids.clone()
    labels_t[:, :p] = -100

    if variant == "gold":
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gold.gold_trainer import ULDLoss

        config = SimpleNamespace(
            uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=1.0,
            uld_teacher_temperature=1.0, uld_skip_student_eos=False, uld_skip_teacher_eos=False,
            use_extended_uld=True, uld_token_merge_strategy="bayesian", uld_use_hybrid_loss=False,
        )  # fmt: skip
        gold = ULDLoss(config)
        offsets = torch.zeros(b, length, 2, dtype=torch.long)
        offsets[:, p:, 0] = torch.arange(r)
        offsets[:, p:, 1] = torch.arange(1, r + 1)

        def run() -> torch.Tensor:
            s_logits = hs @ ws.T  # (B, L, V): what the student model returns
            with torch.no_grad():
                t_logits = ht @ wt.T  # (B, L, Vt)
            return gold(
                s_logits, t_logits, labels_s, labels_t, s_ids, t_ids,
                student_byte_offsets=offsets, teacher_byte_offsets=offsets,
            )  # fmt: skip
    else:
        # kdkit's shifted coordinates: position t predicts token t + 1; the response's tokens p..L-1 are
        # predicted at p-1..L-2, span k at position p-1+k on both sides
        groups = torch.full((b, length - 1), -1, dtype=torch.long)
        groups[:, p - 1 :] = torch.arange(b * r).view(b, r)
        first = groups >= 0
        top_k = args.top_k if variant == "kdkit top-k" else None

        def run() -> torch.Tensor:
            loss, _ = aligned_cross_tokenizer_loss(
                hs[:, :-1], ws, ht[:, :-1], wt,
                student_targets=s_ids[:, 1:], teacher_targets=t_ids[:, 1:],
                student_groups=groups, teacher_groups=groups, student_first=first, teacher_first=first,
                num_groups=b * r, top_k=top_k,
                chunk_size=max(1, args.chunk_size * 32768 // max(args.vocab, args.teacher_vocab)),
            )  # fmt: skip
            return loss

    def step() -> float:
        hs.grad, ws.grad = torch.zeros_like(hs), torch.zeros_like(ws)  # gradient buffers: not the loss's
        loss = run()
        loss.backward()
        return float(loss)

    value = step()  # warm-up, and the value
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    hs.grad, ws.grad = torch.zeros_like(hs), torch.zeros_like(ws)
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    run().backward()
    peak = _status("VmHWM") - base
    return {"loss": value, "seconds": statistics.median(times), "peak": float(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--response", type=int, default=224)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--teacher-vocab", type=int, default=262144)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--teacher-dim", type=int, default=640)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--top-k", type=int, default=512)
    parser.add_argument("--scale", type=float, default=4.0, help="standard deviation of the logits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return

    print("command:", " ".join(["python", *sys.argv]), flush=True)
    results = run_children(__file__, args.variants)
    ref = results.get("gold")
    print(
        f"\nULD loss forward + backward, {args.batch_size} x {args.response} response tokens "
        f"(+ {args.prompt} prompt), Vs = {args.vocab:,}, Vt = {args.teacher_vocab:,}, fp32, CPU, "
        f"median of {args.repeats}\n"
    )
    print("| variant | loss | time (s) | peak memory (GiB) | vs GOLD (time, memory) |")
    print("|---|---:|---:|---:|---:|")
    for variant, res in results.items():
        name = variant if variant != "kdkit top-k" else f"kdkit, top_k {args.top_k}"
        rel = "-"
        if ref and variant != "gold":
            rel = f"{ref['seconds'] / res['seconds']:.2f}x faster, {100 * res['peak'] / max(ref['peak'], 1):.0f}%"
        print(f"| {name} | {res['loss']:.6f} | {res['seconds']:.2f} | {res['peak'] / 2**30:.2f} | {rel} |")
    if ref and "kdkit" in results:
        diff = abs(results["kdkit"]["loss"] - ref["loss"]) / abs(ref["loss"])
        print(f"\nkdkit (exact) vs GOLD: relative difference of the loss {diff:.1e}")


if __name__ == "__main__":
    main()
