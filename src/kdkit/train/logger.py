"""Training logs: one JSON object per line (logs/train.jsonl) and TensorBoard events (logs/tb).

A run resumed from the checkpoint of step N first drops the records of later steps (written by the run
that was interrupted after that checkpoint, and about to be written again), and a torn last line; its
TensorBoard writer purges the events after step N the same way. The log then reads as if the run had
never stopped: every step once, in order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kdkit.io import atomic_write_text

LOG_FILE = "train.jsonl"


def truncate_log(path: Path, last_step: int) -> int:
    """Keep the records of ``path`` up to ``last_step`` (and drop unreadable lines); returns how many
    records were dropped. The file is rewritten atomically, and only when something is dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if line.endswith("\n") and isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))
    return len(lines) - len(kept)


class RunLogger:
    def __init__(self, log_dir: Path, enabled: bool = True, start_step: int = 0) -> None:
        """Append to ``log_dir``; records after ``start_step`` (the step training starts from) are dropped."""
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        resumed = (log_dir / LOG_FILE).is_file()
        truncate_log(log_dir / LOG_FILE, start_step)
        self._jsonl = open(log_dir / LOG_FILE, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        try:
            # tensorboard: heavy (~1 s to import) and optional for training: loaded only when logging starts
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events of steps >= it written by an earlier writer
            self._tb = SummaryWriter(str(log_dir / "tb"), purge_step=start_step + 1 if resumed else None)
        except ImportError:  # tensorboard is a dependency, but logging must never stop training
            self._tb = None

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
