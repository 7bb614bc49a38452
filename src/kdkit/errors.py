"""The one exception type that the CLI turns into a one-line message and exit code 2, and warnings."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable


class KdkitError(Exception):
    """A user-facing error: what is wrong, where, and how to fix it, in one line.

    The CLI prints ``error: <message>`` and exits with status 2 (no traceback unless ``--debug``).
    Whitespace runs (newlines included, e.g. from a user's key or a library's message) become one space.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split()))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    options = [str(c) for c in choices]
    prefixed = [c for c in options if len(str(word)) >= 3 and c.startswith(str(word))]  # 'acc' -> 'accuracy'
    close = prefixed[:1] or difflib.get_close_matches(str(word), options, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def warn(message: str) -> None:
    """Print ``warning: <message>`` on stderr, once per run (the main process of a multi-process launch)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    """Print a progress note on stderr (the main process of a multi-process launch): stdout stays for the
    machine-readable results of `kdkit eval`, `predict`, `distill`, ..."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)


def is_out_of_memory(err: BaseException) -> bool:
    """An allocation failure: torch's OutOfMemoryError (GPU), the CPU allocator's, or Python's MemoryError."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_message(command: str, err: BaseException) -> str:
    """One line for an out-of-memory failure: what ran out, and the knobs that lower the peak."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    if command == "cache":
        knobs = "lower cache.batch_size or teacher.max_length"
    elif command not in ("distill", "finetune", "demo"):
        knobs = "lower eval.batch_size (predict: --batch-size) or the max_length of the models"
    else:
        knobs = (
            "lower train.batch_size (raise train.grad_accum to keep the effective batch), eval.batch_size, "
            "student.max_length / teacher.max_length or method.chunk_size (causal LMs), use "
            "train.mixed_precision=bf16, or a teacher cache (`kdkit cache`) so the teacher is not loaded; "
            "then continue with --resume"
        )
    return f"out of memory in `kdkit {command}` ({first}); {knobs}"
