"""A run's output dir: claimed when the run starts (one run per dir, never a user's own files), and the
final files written at the end in an order that a kill at any point cannot spoil (``kdkit.layout`` lists
what the dir holds).

A dir is a kdkit run when it holds the marker ``.kdkit-run.json`` (written first) or, for runs of older
kdkit versions, a config.yaml beside logs, checkpoints or metrics.json. ``--overwrite`` deletes only what
kdkit writes there; a dir that is not a run and holds anything else is refused, with or without it; the
current dir, its ancestors, the home dir and ``/`` are never output dirs. The marker also records what the
run trains on (data and teacher fingerprints), so that ``--resume`` after they changed is refused.
"""

from __future__ import annotations

import datetime
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdkit.config import Config
from kdkit.errors import KdkitError
from kdkit.io import atomic_dir, atomic_write_json, atomic_write_text, remove_leftovers
from kdkit.layout import (
    BEST,
    CHECKPOINTS,
    CONFIG,
    FINAL_STAGING,
    LOCK,
    LOGS,
    MARKER,
    METRICS,
    MODEL_FILES,
    RUN_NAMES,
    TRAINER_STATE,
)
from kdkit.methods.base import Method
from kdkit.models import save_model
from kdkit.report.card import write_model_card
from kdkit.train.checkpoint import TrainerState
from kdkit.version import __version__

MARKER_FORMAT = 1


def refuse_shared_dirs(out: Path) -> None:
    """The current dir, its ancestors, the home dir and ``/`` hold other things: never an output dir."""
    resolved, cwd = out.expanduser().resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        where = "the current directory" if resolved == cwd else "your home directory"
        if resolved != cwd and resolved in cwd.parents:
            where = "/" if resolved == Path("/") else "a parent of the current directory"
        raise KdkitError(
            f"output_dir '{out}' is {where}; kdkit writes each run into a dir of its own: set output_dir to "
            "a new dir, e.g. runs/my-run"
        )


def read_marker(out: Path) -> dict[str, Any] | None:
    path = out / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise KdkitError(
            f"{path} is unreadable ({err}); delete it if '{out}' holds no run of yours"
        ) from None
    if not isinstance(marker, dict):
        raise KdkitError(f"{path} is not a kdkit run marker; delete it if '{out}' holds no run of yours")
    return marker


def is_run_dir(out: Path) -> bool:
    """Whether ``out`` holds a kdkit run (its marker, or an older run's config.yaml beside its outputs)."""
    if (out / MARKER).is_file():
        return True
    return (out / CONFIG).is_file() and any((out / n).exists() for n in (LOGS, CHECKPOINTS, METRICS))


def refuse_foreign_dir(out: Path, keep: tuple[str, ...] = ()) -> None:
    """Refuse a non-empty dir that holds no kdkit run (only ``keep``, a method's files, may be there): kdkit
    writes no file there, not even its lock, and deletes nothing, with or without ``--overwrite``."""
    entries = [p for p in out.iterdir() if p.name != LOCK] if out.is_dir() else []
    if entries and not is_run_dir(out) and any(p.name not in keep for p in entries):
        shown = ", ".join(sorted(p.name for p in entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise KdkitError(
            f"output dir '{out}' is not empty and holds no kdkit run ({shown}); kdkit never deletes files it "
            "did not write, with or without --overwrite: set output_dir to a new or empty dir"
        )


def _own_entries(out: Path, keep: tuple[str, ...]) -> list[Path]:
    """What kdkit wrote at the top of run dir ``out``: its names, the saved model's files, the method's
    files and the temp files of killed writes. A user's other files are not in it."""
    marker = read_marker(out) or {}
    names = {*RUN_NAMES, *keep, *marker.get("files", [])}
    found = {p for name in names for p in out.glob(name) if p.name != LOCK}
    found |= {p for pattern in MODEL_FILES for p in out.glob(pattern)}
    found |= {
        p for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK and _is_temp_of(p.name, names)
    }
    return sorted(found)


def _is_temp_of(name: str, names: set[str]) -> bool:
    """``.NAME.xxxx``: the temp file or dir of an atomic write of NAME (``kdkit.io``)."""
    return any(name.startswith(f".{n}.") for n in names)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def prepare_output_dir(
    config: Config,
    resume: bool,
    overwrite: bool,
    main: bool,
    keep: tuple[str, ...] = (),
    inputs: dict[str, Any] | None = None,
    check_config: bool = True,
) -> Path:
    """Claim ``config.output_dir`` for this run (the caller holds its lock); returns it.

    A different run there needs ``overwrite`` (or ``resume`` if it is the same config); ``keep`` are names
    the run's method may find there ahead of the run (e.g. a knowledge base built by `kdkit kb build`).
    ``inputs`` (``{key: {"what", "fingerprint"}}`` of the data and the teacher) are recorded in the marker;
    on ``resume`` they must match what the run started with. Only the main process checks and writes;
    callers wait for it.
    """
    out = Path(config.output_dir)
    refuse_shared_dirs(out)
    if resume and overwrite:
        raise KdkitError(
            f"--resume and --overwrite contradict each other: --resume continues the run in '{out}', "
            "--overwrite discards it; pass one of them"
        )
    if not main:
        return out
    refuse_foreign_dir(out, keep)
    run_dir = is_run_dir(out)
    if run_dir and not resume and not overwrite and _nothing_to_keep(out, keep):
        # a run that failed before its first checkpoint (e.g. a bad column): retrying it needs no flag
        _remove([out / CONFIG, out / LOGS, out / MARKER])
        run_dir = False
    if run_dir:
        if overwrite:
            _remove(_own_entries(out, keep))
        elif not resume:
            raise KdkitError(
                f"output dir '{out}' already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or set output_dir"
            )
        else:
            _check_same_run(out, config, inputs, check_config)
    out.mkdir(parents=True, exist_ok=True)
    marker = read_marker(out) if (resume and run_dir) else None
    if marker is None:
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        marker = {
            "format": MARKER_FORMAT,
            "kdkit": __version__,
            "created": created,
            "files": [],
            "inputs": inputs,
        }
        atomic_write_json(out / MARKER, marker)
    atomic_write_text(out / CONFIG, config.to_yaml())
    return out


def _check_same_run(out: Path, config: Config, inputs: dict[str, Any] | None, check_config: bool) -> None:
    """``--resume``: the same config (unless the dir's name already says what it holds, as a fine-tuned
    teacher's does) and the same data and teacher as when the run started."""
    saved = out / CONFIG
    if check_config and saved.is_file() and saved.read_text() != config.to_yaml():
        raise KdkitError(
            f"output dir '{out}' holds a run with a different config; compare {saved} with your config, "
            "or pass --overwrite"
        )
    before = (read_marker(out) or {}).get("inputs") or {}
    for key, now in (inputs or {}).items():
        was = before.get(key)
        if was is not None and was.get("fingerprint") != now.get("fingerprint"):
            raise KdkitError(
                f"--resume: {now.get('what', key)} changed since the run in '{out}' started (its fingerprint "
                f"differs from the one in {out / MARKER}); restore it, or pass --overwrite to start over"
            )


def _nothing_to_keep(out: Path, keep: tuple[str, ...]) -> bool:
    """True when ``out`` holds only what a run writes before its first checkpoint (its config.yaml, logs
    and marker) besides the method's own files: nothing a restart would lose."""
    names = {p.name for p in out.iterdir() if p.name != LOCK}
    return CONFIG in names and names <= {CONFIG, LOGS, MARKER, *keep}


def finished_metrics(out: Path) -> dict[str, Any] | None:
    """The metrics of a finished run in ``out`` (metrics.json is written last), else None."""
    path = out / METRICS
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise KdkitError(
            f"{path} is unreadable ({err}): the finished run's metrics are damaged; rerun with --overwrite"
        ) from None
    if not isinstance(metrics, dict):
        raise KdkitError(f"{path} is not a metrics file; rerun with --overwrite")
    return metrics


def save_final(
    out: Path,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict[str, Any],
    state: TrainerState,
    method: Method,
) -> None:
    """Write the student beside a temp name, move each file over the old one, the method's files, then
    metrics.json last (its presence marks a finished run), then remove best/. Main process only."""
    with atomic_dir(out / FINAL_STAGING) as tmp:
        save_model(student, tokenizer, tmp)
    names = sorted(p.name for p in (out / FINAL_STAGING).iterdir())
    marker = read_marker(out) or {}
    atomic_write_json(out / MARKER, {**marker, "files": sorted({*marker.get("files", []), *names})})
    for name in names:
        (out / FINAL_STAGING / name).replace(out / name)  # atomic per file
    (out / FINAL_STAGING).rmdir()
    method.save_files(out)
    atomic_write_json(out / TRAINER_STATE, asdict(state))
    write_model_card(out, metrics)  # README.md: method, paper, teacher, data, metrics, command, versions
    atomic_write_json(out / METRICS, metrics)
    # only now: a run killed before metrics.json is resumed (--resume) and reloads best/ again
    shutil.rmtree(out / BEST, ignore_errors=True)
    remove_leftovers(out, [MARKER])
