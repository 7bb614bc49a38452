"""A served teacher against the live teacher and the cache, and a load test of `kdkit teacher serve`.

    python benchmarks/teacher_server.py [--steps 20] [--trainer-threads 1] [--server-threads 1]
                                        [--clients 1 2 4 8] [--load-seconds 20] [--out runs/bench/teacher_server]

Step time: the recipe configs/dolly_smol20l_from_smol135m_forward_kl.yaml (SmolLM2-135M teacher, 20-layer
student, batch 8, dolly dev) trains ``--steps`` steps three ways, each in a fresh process, on the same
batches: the live teacher in the training process, the teacher cache (top-64, built once), and the
teacher served by `kdkit teacher serve` on 127.0.0.1 (same top-64 rows, the next batches requested ahead).
On one machine the server takes CPU from the trainer: ``--trainer-threads`` and ``--server-threads`` split
the cores (the live and cached runs get the trainer's threads), so the served run shows how much of the
teacher's time the prefetching hides, as with a teacher on other hardware. Reported: seconds per step
(training time over steps, the first step included) and tokens/s.

Load test: ``--clients`` concurrent clients (threads, one connection each) send requests of 8 dolly
sequences for ``--load-seconds`` seconds each; reported: requests/s, scored tokens/s, p50/p99 latency,
errors, the server's resident memory before and after, and the payload bytes per scored token. The server
batches concurrent requests into one forward pass, so its memory grows with the clients while bigger
batches are first seen; ``--sustain`` seconds at the largest client count then show whether it stays flat
once they have been (the last row). ``--variants`` with no names runs the load test alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import data_root_overrides, run_children

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "dolly_smol20l_from_smol135m_forward_kl.yaml"
VARIANTS = ("live", "cache", "served")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    from kdkit.teacher.client import TeacherClient

    env = {**os.environ, "OMP_NUM_THREADS": str(args.server_threads)}
    cmd = [
        sys.executable,
        "-m",
        "kdkit.cli",
        "teacher",
        "serve",
        "--model",
        args.teacher,
        "--port",
        str(args.port),
    ]
    proc = subprocess.Popen([*cmd, "--device", "cpu"], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    deadline = time.monotonic() + 600
    while not TeacherClient(url).health():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the teacher server did not start (exit {proc.poll()})")
        time.sleep(1)
    return proc, url


def _overrides(args: argparse.Namespace) -> list[str]:
    return [
        *data_root_overrides(args.data_root),
        f"cache.dir={Path(args.out) / 'teacher-cache'}",
        f"train.max_steps={args.steps}",
        f"data.max_train_samples={8 * args.steps}",  # the steps' batches (batch 8): the cache covers just them
        "train.eval_every=null",
        "train.save_every=null",
        "train.load_best=false",
        "eval.splits=[]",
        "eval.teacher=false",
        "eval.datasets={}",
    ]


def child(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """One training run in this process: seconds per step."""
    import torch

    from kdkit.cli import _quiet_libraries
    from kdkit.train.run import distill

    torch.set_num_threads(args.trainer_threads)
    _quiet_libraries()
    over = [*_overrides(args), f"output_dir={Path(args.out) / variant}"]
    if variant == "live":
        over.append("cache.dir=null")
    elif variant == "served":
        over += ["cache.dir=null", f"teacher.server={args.url}"]
    result = distill(CONFIG, over, overwrite=True)
    seconds = result.metrics["train_seconds"]
    return {"seconds_per_step": seconds / args.steps, "steps": args.steps}


def load_test(url: str, pid: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Requests/s and latency for each number of concurrent clients."""
    from kdkit.config import load_config
    from kdkit.data.lm import LMDataset
    from kdkit.data.lm_encode import LMCollator, encode_lm
    from kdkit.data.lm_read import load_lm_data
    from kdkit.models.causal_lm import with_pad_token
    from kdkit.models.load import load_tokenizer

    config = load_config(CONFIG, data_root_overrides(args.data_root))  # 16 batches of the full train split
    tok = with_pad_token(load_tokenizer(config.teacher.model))
    enc = LMDataset(
        encode_lm(
            load_lm_data(config.data).split("train"),
            tok,
            config.student.max_length,
            config.data.chat_template,
        )
    )
    collate = LMCollator(tok.pad_token_id)
    batches = [collate([enc[i] for i in range(s, s + 8)]) for s in range(0, 8 * 16, 8)]
    rows = [_load_row(url, pid, batches, clients, args.load_seconds) for clients in args.clients]
    if args.sustain:
        rows.append({**_load_row(url, pid, batches, max(args.clients), args.sustain), "sustained": True})
    return rows


def _load_row(url: str, pid: int, batches: list[dict], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads sending requests for ``seconds``: throughput, latency, errors, server memory."""
    from kdkit.teacher.client import TeacherClient
    from kdkit.teacher.wire import TopKRequest

    latencies: list[float] = []
    counts = {"errors": 0, "tokens": 0}
    lock = threading.Lock()
    rss_before = _rss_mib(pid)
    stop = time.monotonic() + seconds

    def work(c: int) -> None:
        client = TeacherClient(url, retry_seconds=5)
        i = c
        while time.monotonic() < stop:
            b = batches[i % len(batches)]
            i += clients
            t0 = time.perf_counter()
            try:
                r = client.topk(b["student"]["input_ids"], b["student"]["attention_mask"], b["labels"], 64)
            except Exception:
                with lock:
                    counts["errors"] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                counts["tokens"] += int(r.counts.sum())

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    b = batches[0]
    size = len(
        TopKRequest(b["student"]["input_ids"], b["student"]["attention_mask"], b["labels"], 64).encode()
    )
    row = {
        "clients": clients,
        "requests_per_s": len(lat) / wall,
        "tokens_per_s": counts["tokens"] / wall,
        "p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "errors": counts["errors"],
        "rss_before_mib": rss_before,
        "rss_after_mib": _rss_mib(pid),
        "request_bytes": size,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--trainer-threads", type=int, default=1)
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument(
        "--sustain", type=float, default=60.0, help="the largest client count again, this long"
    )
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--teacher", default="smollm2-135m")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", default="runs/bench/teacher_server")
    parser.add_argument("--data-root", default=os.environ.get("KDKIT_DATA_ROOT"))
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return

    from kdkit.cli import _quiet_libraries
    from kdkit.commands.cache import build_cache_for_config

    _quiet_libraries()
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    build_cache_for_config(CONFIG, _overrides(args))
    proc, url = _start_server(args)
    try:
        steps = run_children(__file__, args.variants, ["--url", url])
        load = load_test(url, proc.pid, args) if args.clients else []
    finally:
        proc.kill()
        proc.wait()
    lines = (
        []
        if not steps
        else [
            f"Step time, {args.steps} steps of the 20-layer recipe (batch 8), trainer {args.trainer_threads} thread(s), "
            f"server {args.server_threads} thread(s):",
            "",
            "| teacher | s/step | vs cache |",
            "|---|---:|---:|",
        ]
    )
    base = steps.get("cache", {}).get("seconds_per_step")
    for variant, r in steps.items():
        ratio = f"{r['seconds_per_step'] / base:.2f}x" if base else "-"
        lines.append(f"| {variant} | {r['seconds_per_step']:.2f} | {ratio} |")
    if load:
        lines += [
            "",
            f"Load test, {args.load_seconds:g} s per row (the last, sustained: {args.sustain:g} s), requests of 8 "
            "dolly sequences, top-64:",
            "",
            "| clients | requests/s | scored tokens/s | p50 ms | p99 ms | errors | server RSS before -> after (MiB) |",
            "|---:|---:|---:|---:|---:|---:|---|",
            *(
                f"| {r['clients']}{' (sustained)' if r.get('sustained') else ''} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['p50_ms']:.0f} | "
                f"{r['p99_ms']:.0f} | {r['errors']} | {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} |"
                for r in load
            ),
        ]
    text = "\n".join(lines)
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"steps": steps, "load": load}, indent=2))


if __name__ == "__main__":
    main()
