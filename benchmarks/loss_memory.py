"""Peak memory of the causal-LM token losses, forward + backward: plain dense vs kdkit's chunked loss vs
the top-k cached teacher, for every divergence and ATKD, and of the student's cross-entropy (SFT: dense vs
chunked; it has no teacher, so no cached column).

    python benchmarks/loss_memory.py [--tokens 4096] [--vocab 49152] [--dim 576] [--chunk-size 1024] [--top-k 64]

Each measurement runs in a fresh process. Inputs (fp32): student hidden states (N, D) and LM head (V, D),
both requiring grad; teacher hidden states (N, D) and LM head (V, D) (dense and chunked) or the cached
top-k ids and log-probabilities (N, k) (cached). The peak is the process's resident-set high-water mark
during forward + backward minus the resident set just before (the high-water mark is reset through
/proc/self/clear_refs), so it is the loss's own working memory, inputs and their gradients' buffers
excluded. Dense = the logits of both models for all tokens (`hidden @ W.T`) and the public loss function
(`kdkit.losses.token_divergence` mean, `atkd_loss`; `F.cross_entropy` for the cross-entropy). On GPU, torch.cuda.max_memory_allocated is used.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASES = ["forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "tvd", "atkd", "cross_entropy"]
PATHS = ["dense", "chunked", "cached top-k"]


def _status(key: str) -> int:
    """A /proc/self/status field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(case: str, path: str, n: int, v: int, d: int, chunk: int, k: int, device: str) -> float:
    """Bytes of peak working memory of one loss forward + backward (runs in the child process)."""
    import torch

    from kdkit.losses.atkd import atkd_loss
    from kdkit.losses.chunked import chunked_atkd_loss, chunked_cross_entropy, chunked_token_loss
    from kdkit.losses.divergences import token_divergence
    from kdkit.losses.topk import TopKTeacher, topk_atkd_loss, topk_of_logits, topk_token_loss

    torch.manual_seed(0)
    dev = torch.device(device)
    hs = torch.randn(n, d, device=dev).requires_grad_(True)
    ws = (0.02 * torch.randn(v, d, device=dev)).requires_grad_(True)
    targets = torch.randint(0, v, (n,), device=dev)
    mask = torch.ones(n, dtype=torch.bool, device=dev)
    ht, wt, teacher = None, None, None
    if path == "cached top-k":
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
    else:
        ht, wt = torch.randn(n, d, device=dev), 0.02 * torch.randn(v, d, device=dev)
    kwargs = {"generalized_jsd": {"beta": 0.5}, "skew_kl": {"alpha": 0.1}}.get(case, {})

    def run() -> None:
        if case == "cross_entropy":  # the student alone (SFT)
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.tokens, args.vocab, args.dim, args.chunk_size, args.top_k, args.device)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], *shape)))
        return

    print("command:", " ".join(["python", *sys.argv]))
    rows = []
    for case in args.cases:
        peaks = {}
        for path in PATHS[:2] if case == "cross_entropy" else PATHS:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child", case, path]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            peaks[path] = json.loads(out.strip().splitlines()[-1]) / 2**30
        cells = [f"{peaks['dense']:.2f}"] + [
            f"{peaks[p]:.2f} ({100 * peaks[p] / peaks['dense']:.0f}%)" if p in peaks else "-"
            for p in PATHS[1:]
        ]
        rows.append(f"| {case} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)
    print(
        f"\nPeak memory of loss forward + backward (GiB; % of dense), {args.tokens:,} tokens, V = {args.vocab:,}, "
        f"D = {args.dim}, fp32, chunk_size {args.chunk_size}, cached top-{args.top_k} (fp16 log-probs), {args.device}\n"
    )
    print("| loss | dense | chunked (kdkit) | cached top-k (kdkit) |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
