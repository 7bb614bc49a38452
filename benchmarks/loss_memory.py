"""Peak memory of the causal-LM token losses, forward + backward: plain dense vs kdkit's chunked loss vs
the top-k cached teacher, for every divergence and ATKD, and of the student's cross-entropy (SFT: dense vs
chunked; it has no teacher, so no cached column); and of the cross-tokenizer losses (ULD and the hybrid)
against a teacher with another vocabulary (``--teacher-vocab``, ``--teacher-dim``; one span per token).

    python benchmarks/loss_memory.py [--tokens 4096] [--vocab 49152] [--dim 576] [--chunk-size 1024] [--top-k 64]
    python benchmarks/loss_memory.py --cases uld uld_hybrid [--teacher-vocab 262144] [--teacher-dim 640]

Each measurement runs in a fresh process. Inputs (fp32): student hidden states (N, D) and LM head (V, D),
both requiring grad; teacher hidden states (N, D) and LM head (V, D) (dense and chunked) or the cached
top-k ids and log-probabilities (N, k) (cached). The peak is the process's resident-set high-water mark
during forward + backward minus the resident set just before (the high-water mark is reset through
/proc/self/clear_refs), so it is the loss's own working memory, inputs and their gradients' buffers
excluded. Dense = the logits of both models for all tokens (`hidden @ W.T`) and the public loss function
(`kdkit.losses.token_divergence` mean, `atkd_loss`; `F.cross_entropy` for the cross-entropy; `uld_loss`, and
for the hybrid `hybrid_terms` on full probabilities). Chunked ULD = `aligned_cross_tokenizer_loss` with
every token a span of its own (its chunks hold ``chunk_size * 32768 / max(V, Vt)`` spans, as in training);
cached ULD = `cached_uld_loss` against the teacher's top-k fp16 log-probabilities of each span.
The hybrid's shared sub-vocabulary is the first ``V // 2`` ids of both sides. On GPU,
torch.cuda.max_memory_allocated is used.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASES = ["forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "tvd", "atkd", "cross_entropy"]
CROSS = ["uld", "uld_hybrid"]  # a teacher with another vocabulary (the hybrid cannot be cached)
PATHS = ["dense", "chunked", "cached top-k"]


def _status(key: str) -> int:
    """A /proc/self/status field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(
    case: str, path: str, n: int, v: int, d: int, chunk: int, k: int, device: str, vt: int = 0, dt: int = 0
) -> float:
    """Bytes of peak working memory of one loss forward + backward (runs in the child process)."""
    import torch

    from kdkit.losses.atkd import atkd_loss
    from kdkit.losses.chunked import chunked_atkd_loss, chunked_cross_entropy, chunked_token_loss
    from kdkit.losses.divergences import token_divergence
    from kdkit.losses.topk import TopKTeacher, topk_atkd_loss, topk_of_logits, topk_token_loss
    from kdkit.losses.uld import aligned_cross_tokenizer_loss, cached_uld_loss, hybrid_terms, uld_loss

    torch.manual_seed(0)
    dev = torch.device(device)
    hs = torch.randn(n, d, device=dev).requires_grad_(True)
    ws = (0.02 * torch.randn(v, d, device=dev)).requires_grad_(True)
    targets = torch.randint(0, v, (n,), device=dev)
    mask = torch.ones(n, dtype=torch.bool, device=dev)
    ht, wt, teacher = None, None, None
    if path == "cached top-k" and case in CROSS:  # the teacher's top-k log-probs of each span, fp16
        with torch.no_grad():
            lps = []
            for s in range(0, n, 512):
                logits = (
                    torch.randn(min(512, n - s), dt, device=dev) @ (0.02 * torch.randn(vt, dt, device=dev)).T
                )
                lps.append(torch.log_softmax(logits, -1).topk(k, dim=-1).values.half())
        cached_lps, factors = torch.cat(lps), torch.zeros(n, device=dev)
    elif path == "cached top-k":
        with torch.no_grad():  # the cache's content, computed chunk by chunk before the measurement
            ids, lps, tgt = [], [], []
            for s in range(0, n, 512):
                logits = (
                    torch.randn(min(512, n - s), d, device=dev) @ (0.02 * torch.randn(v, d, device=dev)).T
                )
                i, lp = topk_of_logits(logits, k)
                ids.append(i)
                lps.append(lp.half())
                tgt.append(torch.log_softmax(logits, -1).gather(-1, targets[s : s + 512, None]).squeeze(-1))
        teacher = TopKTeacher(torch.cat(ids), torch.cat(lps), torch.cat(tgt))
    elif case in CROSS:
        ht, wt = torch.randn(n, dt, device=dev), 0.02 * torch.randn(vt, dt, device=dev)
    else:
        ht, wt = torch.randn(n, d, device=dev), 0.02 * torch.randn(v, d, device=dev)
    spans = torch.arange(n, device=dev).unsqueeze(0)  # (1, n): every token a span of its own
    matched = (torch.arange(v // 2, device=dev), torch.arange(v // 2, device=dev))
    kwargs = {"generalized_jsd": {"beta": 0.5}, "skew_kl": {"alpha": 0.1}}.get(case, {})

    def run() -> None:
        if case in CROSS and path == "cached top-k":
            loss, _ = cached_uld_loss(
                hs.unsqueeze(0), ws, teacher_logprobs=cached_lps, teacher_log_factors=factors,
                student_targets=targets.unsqueeze(0), student_groups=spans, student_first=spans >= 0,
                num_groups=n, chunk_size=max(1, chunk * 32768 // v),
            )  # fmt: skip
        elif case in CROSS and path == "dense":
            p, q = (hs @ ws.T).softmax(-1), (ht @ wt.T).softmax(-1)
            if case == "uld":
                loss = uld_loss(hs @ ws.T, ht @ wt.T)
            else:
                m, u = hybrid_terms(p, q, matched, divergence="generalized_jsd", beta=0.5)
                loss = (0.5 * m + 0.5 * u).mean()
        elif case in CROSS:
            loss, _ = aligned_cross_tokenizer_loss(
                hs.unsqueeze(0), ws, ht.unsqueeze(0), wt,
                student_targets=targets.unsqueeze(0), teacher_targets=targets.unsqueeze(0),
                student_groups=spans, teacher_groups=spans,
                student_first=spans >= 0, teacher_first=spans >= 0, num_groups=n,
                matched=matched if case == "uld_hybrid" else None, divergence="generalized_jsd",
                divergence_kwargs={"beta": 0.5}, chunk_size=max(1, chunk * 32768 // max(v, vt)),
            )  # fmt: skip
        elif case == "cross_entropy":  # the student alone (SFT)
            if path == "dense":
                loss = torch.nn.functional.cross_entropy(hs @ ws.T, targets)
            else:
                loss = chunked_cross_entropy(hs, ws, targets, mask, chunk_size=chunk)
        elif path == "dense":
            s_logits, t_logits = hs @ ws.T, ht @ wt.T
            if case == "atkd":
                loss = atkd_loss(s_logits, t_logits, targets, mask)
            else:
                loss = token_divergence(case, s_logits, t_logits, **kwargs).mean()
        elif path == "chunked":
            if case == "atkd":
                loss, _ = chunked_atkd_loss(hs, ws, ht, wt, targets, mask, chunk_size=chunk)
            else:
                loss, _ = chunked_token_loss(
                    hs, ws, ht, wt, mask, divergence=case, chunk_size=chunk, **kwargs
                )
        elif case == "atkd":
            loss, _ = topk_atkd_loss(hs, ws, teacher, targets, mask, vocab_size=v, chunk_size=chunk)
        else:
            loss, _ = topk_token_loss(
                hs, ws, teacher, mask, divergence=case, vocab_size=v, chunk_size=chunk, **kwargs
            )
        loss.backward()

    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    hs.grad, ws.grad = torch.zeros_like(hs), torch.zeros_like(ws)  # gradient buffers: not the loss's
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    run()
    return float(_status("VmHWM") - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--teacher-vocab", type=int, default=262144, help="cross-tokenizer cases")
    parser.add_argument("--teacher-dim", type=int, default=640, help="cross-tokenizer cases")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES + CROSS)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.tokens, args.vocab, args.dim, args.chunk_size, args.top_k, args.device)
    shape += (args.teacher_vocab, args.teacher_dim)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], *shape)))
        return

    print("command:", " ".join(["python", *sys.argv]))
    rows = []
    for case in args.cases:
        peaks = {}
        for path in PATHS[:2] if case in ("cross_entropy", "uld_hybrid") else PATHS:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child", case, path]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == -9:  # the kernel's out-of-memory killer: the path does not fit
                peaks[path] = None
                continue
            if done.returncode != 0:
                sys.exit(f"{case} {path} failed:\n{done.stderr}")
            peaks[path] = json.loads(done.stdout.strip().splitlines()[-1]) / 2**30
        dense = peaks["dense"]
        cells = [f"{dense:.2f}" if dense is not None else "killed (out of memory)"] + [
            "-" if p not in peaks else "killed" if peaks[p] is None
            else f"{peaks[p]:.2f}" + (f" ({100 * peaks[p] / dense:.0f}%)" if dense else "")
            for p in PATHS[1:]
        ]  # fmt: skip
        rows.append(f"| {case} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)
    print(
        f"\nPeak memory of loss forward + backward (GiB; % of dense), {args.tokens:,} tokens, V = {args.vocab:,}, "
        f"D = {args.dim}, fp32, chunk_size {args.chunk_size}, cached top-{args.top_k} (fp16 log-probs), {args.device}"
        + (
            f"; ULD: teacher Vt = {args.teacher_vocab:,}, Dt = {args.teacher_dim}"
            if set(args.cases) & set(CROSS)
            else ""
        )
        + "\n"
    )
    print("| loss | dense | chunked (kdkit) | cached top-k (kdkit) |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
