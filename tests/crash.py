"""Kill a real `kdkit` process at a random point, and compare what the resumed run ends with.

``start(...)`` runs ``python -m tests.crash ARGS...`` in a subprocess: the `kdkit` CLI (``kdkit.cli.main``)
with sleeps added at the points where work is done or written (each training step, a checkpoint's files
written but not yet renamed, ``best/`` in its temp dir, a cache shard in its temp file or without its
checksum, each batch of the KB's teacher pass, a KB in its temp dir), so that a SIGKILL sent a random
time after a chosen checkpoint / shard / chunk appeared lands inside one of them. The kill point comes from
a seed that the test prints; ``KDKIT_KILL_SEED=<seed>`` replays it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SEED_ENV = "KDKIT_KILL_SEED"
DELAY_ENV = "KDKIT_TEST_DELAY"


def kill_rng(what: str) -> random.Random:
    """A seeded RNG for the kill point; the seed is printed (shown by pytest when the test fails)."""
    # not the global RNG: runs in this process seed it (accelerate's set_seed)
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1_000_000))
    print(f"{what}: kill seed {seed} (replay with {SEED_ENV}={seed})")
    return random.Random(seed)


def start(args: list[str], delay: float, logs: Path) -> subprocess.Popen[bytes]:
    """``kdkit ARGS`` in a subprocess, slowed by ``delay`` seconds per unit of work (output in ``logs``)."""
    env = {**os.environ, DELAY_ENV: str(delay), "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout.txt", "wb") as out, open(logs / "stderr.txt", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.crash", *args], stdout=out, stderr=err, env=env,
            # a shell that runs the tests in the background ignores SIGINT, and children inherit that: the
            # child gets the default back, so Python installs its Ctrl-C handler as it would in a terminal
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip


def kill_when(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], after: float, logs: Path, timeout: float = 300
) -> None:
    """SIGKILL ``proc`` ``after`` seconds once ``ready()``; fails if it ends on its own before that."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            tail = (logs / "stderr.txt").read_text(errors="replace")[-3000:]
            raise AssertionError(f"the process ended (rc {proc.returncode}) before the kill point:\n{tail}")
        time.sleep(0.01)
    time.sleep(after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the process finished (rc {proc.returncode}) before the kill"


def step_reached(run: Path, step: int) -> Callable[[], bool]:
    """True once a checkpoint of ``step`` or later is in ``run/checkpoints`` (older ones get pruned)."""

    def ready() -> bool:
        root = run / "checkpoints"
        names = [p.name for p in root.iterdir()] if root.is_dir() else []
        return any(n.startswith("step-") and int(n.split("-")[1]) >= step for n in names)

    return ready


def files(root: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Every file under ``root`` (relative paths, sorted), except under the ``skip`` prefixes."""
    found = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in found if not f.startswith(skip))


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=1e-5, msg=key)


def without_timing(data: Any) -> Any:
    """A metrics / state / log record without its wall-clock fields."""
    if isinstance(data, dict):
        return {k: without_timing(v) for k, v in data.items() if k not in ("train_seconds", "time")}
    return data


def log_records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "logs" / "train.jsonl").read_text().splitlines()
    return [without_timing(json.loads(line)) for line in lines]


def error_line(stderr: str) -> str:
    """The CLI's error message: the one ``error:`` line, last on stderr (progress bars may come before)."""
    assert stderr.count("error:") == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr[-3000:]
    return last


def damage(path: Path, how: str = "flip") -> None:
    """``flip``: invert one byte in the middle; ``truncate``: keep the first half."""
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


# --- the slowed CLI, run in the subprocess ----------------------------------------------------------------


def _before(fn: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    @functools.wraps(fn)
    def slowed(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return slowed


def _after(fn: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    @functools.wraps(fn)
    def slowed(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        time.sleep(seconds)
        return result

    return slowed


def _slow_down(delay: float) -> None:
    from accelerate import Accelerator

    import kdkit.retrieval.build as kb_build
    import kdkit.retrieval.kb as kb
    import kdkit.shards as shards
    import kdkit.train.loop as loop

    loop._accumulate = _before(loop._accumulate, delay)  # each training step
    Accelerator.save_state = _after(Accelerator.save_state, delay / 2)  # checkpoint in its temp dir
    real_atomic_dir = loop.atomic_dir

    @contextlib.contextmanager
    def slow_atomic_dir(path: Path) -> Iterator[Path]:  # best/ written to its temp dir, not renamed yet
        with real_atomic_dir(path) as tmp:
            yield tmp
            time.sleep(delay / 2)

    loop.atomic_dir = slow_atomic_dir
    shards.save_file = _after(shards.save_file, delay / 2)  # a shard (or KB chunk) in its temp file
    shards.atomic_write_text = _before(shards.atomic_write_text, delay / 4)  # renamed, no checksum yet
    kb_build.pooled_embedding = _before(kb_build.pooled_embedding, delay)  # each batch of the KB pass
    kb.save_index = _after(kb.save_index, delay)  # the whole KB in its temp dir


if __name__ == "__main__":
    _slow_down(float(os.environ.get(DELAY_ENV, "0")))
    from kdkit.cli import main

    sys.exit(main(sys.argv[1:]))
