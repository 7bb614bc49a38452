"""Model cards: the ``README.md`` that every finished run writes beside its model (Hugging Face style).

The card has a YAML front matter (``library_name: transformers``, tags, ``base_model`` where a hub id is
known, ``pipeline_tag``) and says what was trained and how: the method and its paper, the teacher, the
data section of the config, the final metrics, the exact command and the software versions. The command
is what ``kdkit.cli.main`` recorded (``record_command``) before it dispatched, or a note that the Python
API was used.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kdkit.assets import ASSETS
from kdkit.config import Config, load_config
from kdkit.io import atomic_write_text
from kdkit.methods import METHODS
from kdkit.methods.base import TaskLoss
from kdkit.report.collect import is_split, sections
from kdkit.structured import to_dict

log = logging.getLogger(__name__)

# The command line of this process when it is the `kdkit` CLI (set by kdkit.cli.main), else None.
COMMAND: list[str] | None = None
SOFTWARE = ("kdkit", "torch", "transformers", "accelerate")


def record_command(argv: Sequence[str] | None = None) -> None:
    """Remember the CLI command of this process (``argv`` as given to ``main``, else ``sys.argv[1:]``)."""
    global COMMAND
    COMMAND = ["kdkit", *(sys.argv[1:] if argv is None else argv)]


def clear_command() -> None:
    """Forget the recorded command (a later Python API call in this process is not that command)."""
    global COMMAND
    COMMAND = None


def command_line(kind: str) -> str:
    """The recorded command, shell-quoted, or how the Python API was called."""
    if COMMAND is None:
        return f"Python API: kdkit.{kind}(...)"
    return shlex.join(COMMAND)


def hub_id(name: str | None) -> str | None:
    """A hub id for ``name`` (an asset's, or ``name`` itself when it looks like one), else None."""
    if not name:
        return None
    if name in ASSETS:
        return ASSETS[name].hub_id
    if name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists():
        return name
    return None


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in SOFTWARE:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _paper(method: str) -> str:
    if method == TaskLoss.name:
        return TaskLoss.paper
    return METHODS.get(method).paper if method in METHODS else "-"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    """Markdown table: one row per (model, split), one column per metric. A method's extra sections (e.g.
    ``retrieval``: the student with retrieval from its knowledge base) are rows "this model + <section>"."""
    rows = [
        ("this model", k, v) for k, v in metrics.items() if k not in ("teacher", "truncated") and is_split(v)
    ]
    for name, splits in sections(metrics).items():
        if name != "teacher":
            rows += [(f"this model + {name}", k, v) for k, v in splits.items()]
    rows += [("teacher", k, v) for k, v in metrics.get("teacher", {}).items()]
    if not rows:
        return ["No eval split was evaluated."]
    names = list(dict.fromkeys(n for _, _, values in rows for n in values))
    lines = ["| model | split | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for model, split, values in rows:
        cells = " | ".join(_number(values.get(n)) for n in names)
        lines.append(f"| {model} | {split} | {cells} |")
    return lines


# data fields that only one family of tasks reads (left out of the other family's cards)
LM_DATA_FIELDS = ("prompt", "response", "prompt_template", "chat_template")
CLASSIFIER_DATA_FIELDS = ("text_pair", "label", "label_names")


def _data_section(config: Config) -> dict[str, Any]:
    data = to_dict(config.data)
    unused = CLASSIFIER_DATA_FIELDS if config.task == "causal_lm" else LM_DATA_FIELDS
    return {k: v for k, v in data.items() if k not in unused}


def _student_origin(config: Config, which: str) -> str:
    model = config.teacher if which == "teacher" else config.student
    if which == "teacher":
        return f"`{model.model}`, fine-tuned on the task"
    if model.init == "random":
        return f"random init from the config of `{model.model or config.teacher.model}`"
    if model.model:
        return f"`{model.model}`"
    if model.layers is not None:
        return f"cut from the teacher: its layers {model.layers}"
    if model.num_layers is not None:
        return f"cut from the teacher: {model.num_layers} of its layers, evenly spaced"
    return "the teacher's architecture and weights"


def render_card(config: Config, metrics: dict[str, Any], out: Path) -> str:
    """The card's markdown for the run in ``out`` with the resolved ``config`` and final ``metrics``."""
    kind = str(metrics.get("kind", "distill"))
    which = str(metrics.get("which", "student"))
    method = str(metrics.get("method", kind))
    model = config.teacher if which == "teacher" else config.student
    base = hub_id(model.model) if (which == "teacher" or model.model) else hub_id(config.teacher.model)
    if model.init == "random":
        base = None
    causal = config.task == "causal_lm"
    front: dict[str, Any] = {"library_name": "transformers", "tags": ["kdkit", "knowledge-distillation"]}
    if method != "finetune":
        front["tags"].append(method)
    if base:
        front["base_model"] = base
    front["pipeline_tag"] = "text-generation" if causal else "text-classification"
    teacher = "-"
    if kind == "distill":
        params = metrics.get("teacher_parameters")
        fine_tuned = " (fine-tuned on the task first)" if config.teacher.finetune is not None else ""
        teacher = f"`{config.teacher.model}`{fine_tuned}" + (f", {params:,} parameters" if params else "")
    method_settings = {k: v for k, v in to_dict(config.method).items() if k != "name"}
    rows = [
        ("task", config.task),
        ("method", f"`{method}`" + ("" if kind == "distill" else f" (the {which})")),
        ("paper", _paper(method)),
        ("teacher", teacher),
        ("model", f"{_student_origin(config, which)}; {metrics.get('parameters', 0):,} parameters"),
    ]
    if kind == "distill":
        rows.append(("method settings", ", ".join(f"{k}={v}" for k, v in method_settings.items()) or "-"))
    chosen = metrics.get("inference_settings")
    if isinstance(chosen, dict) and chosen.get("description"):  # settings the method chose after training
        rows.append(("inference settings", str(chosen["description"])))
    train = config.teacher.finetune if which == "teacher" and config.teacher.finetune else config.train
    rows.append(
        (
            "training",
            f"{metrics.get('steps', '-')} steps (best step {metrics.get('best_step', '-')}), "
            f"batch {train.batch_size} x {train.grad_accum}, lr {train.lr}, seed {train.seed}, "
            f"{metrics.get('train_seconds', '-')} s",
        )
    )
    loader = "AutoModelForCausalLM" if causal else "AutoModelForSequenceClassification"
    notes = [
        f"- `base_model` and the teacher name a hub model, but the weights used were {ASSETS[n].note}."
        for n in dict.fromkeys([config.teacher.model, model.model])
        if n in ASSETS and ASSETS[n].note
    ]
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {out.resolve().name}",
        "",
        f"A {'causal language model' if causal else config.task + ' model'} trained with "
        f"kdkit by `{kind}` ({method}). `transformers` loads this "
        f"directory as-is (`{loader}.from_pretrained`).",
        "",
        "## Method",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "## Data",
        "",
        "```yaml",
        yaml.safe_dump({"data": _data_section(config)}, sort_keys=False).strip(),
        "```",
        "",
        "## Metrics",
        "",
        *_metrics_table(metrics),
        "",
        *(["## Notes", "", *notes, ""] if notes else []),
        "## How it was made",
        "",
        "```bash",
        command_line(kind),
        "```",
        "",
        f"Working directory: `{os.getcwd()}`; the resolved config is `config.yaml` beside this file.",
        "",
        "## Software",
        "",
        *(f"- {name} {version}" for name, version in software_versions().items()),
        "",
    ]
    return "\n".join(lines)


def write_model_card(out: str | Path, metrics: dict[str, Any]) -> Path | None:
    """Write ``out/README.md`` (atomically) from ``out/config.yaml`` and ``metrics``; None without a
    config (a card is a courtesy: it never stops a finished run from being saved)."""
    out = Path(out)
    config_file = out / "config.yaml"
    if not config_file.is_file():
        log.warning("no %s: model card skipped", config_file)
        return None
    path = out / "README.md"
    atomic_write_text(path, render_card(load_config(config_file), metrics, out))
    return path
