"""Reading run dirs for `kdkit report`: the resolved config, the final metrics, the training curves, and
which teacher a run learned from.

A finished run dir holds ``config.yaml`` (written when the run starts) and ``metrics.json`` (written last,
so its presence marks a finished run); ``logs/train.jsonl`` holds one JSON record per logged step with
``step``, ``train/...`` and ``eval/...`` values. After ``--resume`` a step may be logged twice: the last
record of a step wins, key by key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdkit.config import Config, load_config
from kdkit.errors import KdkitError
from kdkit.eval.metrics import default_best_metric
from kdkit.io import file_digest
from kdkit.layout import checkpoint_step, step_dirs
from kdkit.teacher.finetuned import teacher_cache_dir

CURVE_PREFIXES = ("train/", "eval/")

Curves = dict[str, dict[int, float]]  # key ("train/loss") -> step -> value


def is_split(section: object) -> bool:
    """Whether a value of metrics.json is one split's metrics (a mapping of metric names to numbers), as
    opposed to a section of splits (``teacher``, or a method's, e.g. with retrieval) or a count per split."""
    return (
        isinstance(section, dict)
        and bool(section)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in section.values())
    )


def sections(metrics: dict[str, object]) -> dict[str, dict[str, dict[str, float]]]:
    """The sections of metrics.json that hold splits besides the student's own (``teacher``, and a method's
    extra evaluation such as ``retrieval``): name -> split -> metrics."""
    return {
        key: value
        for key, value in metrics.items()
        if isinstance(value, dict) and value and all(is_split(v) for v in value.values())
    }


def read_curves(path: str | Path) -> Curves:
    """Numeric ``train/...`` and ``eval/...`` values of a train.jsonl by key and step (last record wins).

    A missing file gives no curves; a line that is not a JSON object (e.g. cut by a crash) is skipped.
    """
    path = Path(path)
    curves: Curves = {}
    if not path.is_file():
        return curves
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        for key, value in record.items():
            if key.startswith(CURVE_PREFIXES) and _is_number(value):
                curves.setdefault(key, {})[step] = float(value)
    return {key: dict(sorted(points.items())) for key, points in sorted(curves.items())}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Run:
    """One finished run dir, read."""

    dir: Path
    config: Config
    metrics: dict[str, Any]
    curves: Curves = field(default_factory=dict)
    name: str = ""  # how the report names it (the dir name, made unique)

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def kind(self) -> str:
        """``distill`` or ``finetune``."""
        return str(self.metrics.get("kind", "distill"))

    @property
    def which(self) -> str:
        """The model a finetune run trained: ``teacher`` or ``student`` (distill runs: ``student``)."""
        return str(self.metrics.get("which", "student"))

    @property
    def method(self) -> str:
        return str(self.metrics.get("method", self.kind))

    @property
    def main_metric(self) -> str:
        """The metric that picked the best checkpoint: ``train.best_metric`` or the task's default."""
        return self.config.train.best_metric or default_best_metric(self.task)

    def quality_metrics(self) -> list[str]:
        """The main metric; for causal LMs also bits per byte (comparable across tokenizers) and ROUGE-L."""
        names = [self.main_metric]
        if self.task == "causal_lm":
            names += [n for n in ("bits_per_byte", "rouge_l") if n not in names]
        return names

    def eval_splits(self) -> list[str]:
        """Splits (and extra eval sets) of metrics.json that hold one of the quality metrics."""
        wanted = set(self.quality_metrics())
        return [key for key, value in self.metrics.items() if is_split(value) and wanted & set(value)]


def read_run(path: str | Path) -> Run:
    """Read a finished run dir; ``KdkitError`` (what, where, how to fix) for anything else."""
    run_dir = Path(path)
    hint = "pass the output_dir of a `kdkit distill` or `kdkit finetune` run"
    if not run_dir.is_dir():
        raise KdkitError(f"run dir '{run_dir}' does not exist; {hint}")
    config_file, metrics_file = run_dir / "config.yaml", run_dir / "metrics.json"
    if not config_file.is_file():
        raise KdkitError(f"'{run_dir}' is not a kdkit run dir (no config.yaml); {hint}")
    if not metrics_file.is_file():
        steps = step_dirs(run_dir)
        last = f", last checkpoint at step {checkpoint_step(steps[-1])}" if steps else ""
        raise KdkitError(
            f"run '{run_dir}' is unfinished (no metrics.json{last}); finish it by rerunning its "
            f"`kdkit distill`/`finetune` command with --resume (config: {config_file}), or leave it out"
        )
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KdkitError(
            f"{metrics_file} is not valid JSON ({err}); rerun the run with --overwrite, or leave it out"
        ) from None
    if not isinstance(metrics, dict) or "parameters" not in metrics:
        raise KdkitError(
            f"{metrics_file} has no 'parameters': not a kdkit metrics file; {hint}, or leave it out"
        )
    try:
        config = load_config(config_file)
    except KdkitError as err:
        raise KdkitError(f"run '{run_dir}': {err}") from None
    return Run(run_dir, config, metrics, read_curves(run_dir / "logs" / "train.jsonl"), run_dir.name)


def read_runs(paths: list[str | Path]) -> list[Run]:
    """Read several run dirs and give each a unique, short name (its dir name, with parents if needed)."""
    if not paths:
        raise KdkitError("no run dirs given; pass one or more output dirs of kdkit runs")
    runs = [read_run(p) for p in paths]
    seen: set[Path] = set()
    for run in runs:
        resolved = run.dir.resolve()
        if resolved in seen:
            raise KdkitError(f"run dir '{run.dir}' is given twice; pass each run once")
        seen.add(resolved)
    depth = 1
    while True:
        names = [_tail(run.dir.resolve(), depth) for run in runs]
        if len(set(names)) == len(names) or depth > 8:
            break
        depth += 1
    for run, name in zip(runs, names, strict=True):
        run.name = name
    return runs


def _tail(path: Path, depth: int) -> str:
    return "/".join(path.parts[-depth:])


def teacher_ref(config: Config) -> str | None:
    """What a run's teacher is, as a key and a name to load: a fine-tuned teacher's cache dir (when it is
    still there), an existing local dir (resolved), or the configured name (asset or hub id)."""
    name = config.teacher.model
    if not name:
        return None
    if config.teacher.finetune is not None and config.task != "causal_lm":
        try:
            cached = teacher_cache_dir(config)
        except (KdkitError, OSError):  # the data files moved: the key cannot be computed
            cached = None
        if cached is not None and (cached / "metrics.json").is_file():
            return str(cached)
        return name  # the base model: the same architecture, so the same latency
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return name


def teacher_label(config: Config) -> str:
    """How the table names a run's teacher: its configured name (a local dir: the dir's name)."""
    name = str(config.teacher.model)
    if Path(name).expanduser().is_dir():
        name = Path(name).expanduser().resolve().name
    return f"{name} (fine-tuned)" if config.teacher.finetune is not None else name


def is_same_model(run_dir: Path, ref: str) -> bool:
    """Whether the model saved in ``run_dir`` is the teacher ``ref``: the same dir, or the same weights
    file (e.g. the demo copies its cached teacher into its output dir)."""
    other = Path(ref)
    if not other.is_dir():
        return False
    if other.resolve() == run_dir.resolve():
        return True
    a, b = run_dir / "model.safetensors", other / "model.safetensors"
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    return file_digest(a) == file_digest(b)
