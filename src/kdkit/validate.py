"""`kdkit validate`: check a config without training: types, paths, names, columns and label spaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdkit.align import vocabulary_matches
from kdkit.assets import ASSETS, converted_path, is_asset
from kdkit.config import Config, load_config
from kdkit.data import load_task_data
from kdkit.data.encode import same_tokenizer
from kdkit.data.lm import load_lm_data, load_lm_file
from kdkit.errors import KdkitError
from kdkit.eval.metrics import check_metrics, default_best_metric
from kdkit.family import family_for
from kdkit.family.causal_lm import check_cross_config
from kdkit.methods import METHODS
from kdkit.models import (
    has_trained_head,
    load_model_config,
    load_tokenizer,
    resolve_model_name,
    with_pad_token,
)
from kdkit.models.load import check_label_space, encoder_depth_check
from kdkit.runtime import make_accelerator
from kdkit.teacher.cache import TeacherCache, is_complete
from kdkit.teacher.client import TeacherClient
from kdkit.teacher.finetuned import teacher_cache_dir
from kdkit.train.teachers import check_teachers, entry_config


def _check_model(
    role: str, name: str, config: Config, label_names: list[str] | None
) -> tuple[str, Any | None]:
    resolved = resolve_model_name(name)
    if not Path(resolved).exists():
        return f"{role}: '{name}' (hub id; not checked offline)", None
    model_config = load_model_config(name)
    check_label_space(name, model_config, config.task, label_names)
    head = "trained head" if has_trained_head(model_config) else "base encoder (new head)"
    return (
        f"{role}: {name} ({model_config.model_type}, {model_config.num_hidden_layers} layers, {head})",
        model_config,
    )


def validate(source: Config | dict[str, Any] | str | Path, overrides: list[str] | None = None) -> list[str]:
    """Return a line of findings per part; raise ``KdkitError`` on the first problem."""
    config = load_config(source, overrides)
    lines = [f"config: task={config.task}, method={config.method.name}, output_dir={config.output_dir}"]
    family = family_for(config.task)
    METHODS.get(config.method.name).check(config.method, config.task)
    job = family.job(config, "distill", "student")
    check_teachers(config, family, job)  # several teachers: each one's settings, and how they combine
    if family.name == "causal_lm":
        return lines + _validate_lm(config)
    data = load_task_data(config.data, config.task)
    sizes = ", ".join(f"{s}={len(data.split(s))}" for s in ("train", "validation", "test") if data.has(s))
    labels = f"{data.num_labels} labels {data.label_names}" if data.label_names else "regression target"
    lines.append(f"data: {sizes}; {labels}")
    metrics = config.eval.metrics
    if metrics:
        check_metrics(config.task, metrics, data.num_labels)
    best = config.train.best_metric or default_best_metric(config.task)
    check_metrics(config.task, [best], data.num_labels)

    if not config.teacher.model:
        raise KdkitError("teacher.model is not set; name a hub id, a local dir or an asset (`kdkit ls`)")
    line, teacher_cfg = _check_model("teacher", config.teacher.model, config, data.label_names)
    lines.append(line + (" + fine-tuning first (teacher.finetune)" if config.teacher.finetune else ""))
    if teacher_cfg is not None and not config.teacher.finetune and not has_trained_head(teacher_cfg):
        lines.append(
            "warning: the teacher has no trained head: `kdkit distill` needs teacher.finetune or a fine-tuned "
            "teacher (`kdkit finetune` accepts it as is)"
        )
    trained = _trained_teacher(config, teacher_cfg)
    if trained is not None and (
        line := family.check_teacher(config, config.train, data, trained, make_accelerator(config))
    ):
        lines.append(line)  # a teacher not clearly above the majority class raises here
    student = config.student
    if student.model:
        line, student_cfg = _check_model("student", student.model, config, data.label_names)
        lines.append(line)
    else:
        student_cfg = teacher_cfg
        lines.append("student: cut from the teacher")
    if student_cfg is not None:
        _check_student(student_cfg, student)
    return lines + _artifact_lines(config)


def _trained_teacher(config: Config, teacher_cfg: Any | None) -> str | None:
    """The teacher to check before distilling, when it is already trained: the fine-tuned one kdkit keeps
    (``teacher.finetune``, once it exists), or the configured model when it has a trained head."""
    if not config.teacher.check or teacher_cfg is None:
        return None
    if config.teacher.finetune is not None:
        kept = teacher_cache_dir(config)
        return str(kept) if (kept / "metrics.json").is_file() else None
    return str(config.teacher.model) if has_trained_head(teacher_cfg) else None


def _check_student(model_config: Any, student: Any) -> None:
    """The student's layers exist in the model it is cut from, and its config_overrides are fields there."""
    if student.init == "pretrained":
        encoder_depth_check(model_config.num_hidden_layers, student.layers, student.num_layers)
    unknown = [k for k in student.config_overrides if k != "num_labels" and not hasattr(model_config, k)]
    if unknown:
        raise KdkitError(
            f"student.config_overrides: {', '.join(map(repr, unknown))} not a field of "
            f"{type(model_config).__name__}; see the model's config.json for the fields it has"
        )


def _lm_model_line(role: str, name: str) -> tuple[str, Any | None]:
    """A causal LM by name; packaged assets are checked without converting them (that takes ~30 s)."""
    if is_asset(name, "model"):
        ASSETS[name].check_installed()
        return f"{role}: {name} (packaged asset, converted on first use)", None
    resolved = resolve_model_name(name)
    if not Path(resolved).exists():
        return f"{role}: '{name}' (hub id; not checked offline)", None
    model_config = load_model_config(name)
    if not any(a.endswith("ForCausalLM") for a in model_config.architectures or []):
        raise KdkitError(f"{role}.model '{name}' is not a causal LM ({model_config.architectures})")
    return (
        f"{role}: {name} ({model_config.model_type}, {model_config.num_hidden_layers} layers)",
        model_config,
    )


def _validate_lm(config: Config) -> list[str]:
    data = load_lm_data(config.data)
    sizes = ", ".join(f"{s}={len(data.split(s).prompts)}" for s in data.available())
    lines = [f"data: {sizes} (prompt '{config.data.prompt}', response '{config.data.response}')"]
    for name, path in config.eval.datasets.items():
        lines.append(f"eval.datasets.{name}: {len(load_lm_file(path, config.data).prompts)} examples")
    best = config.train.best_metric or default_best_metric(config.task)
    check_metrics(config.task, [best], 0)
    if not config.teacher.model and not config.student.model:
        raise KdkitError("set teacher.model (and student.layers / num_layers) or student.model")
    teacher_cfg = None
    if config.teacher.model:
        line, teacher_cfg = _lm_model_line("teacher", config.teacher.model)
        lines.append(line)
    student = config.student
    student_cfg = teacher_cfg
    if student.model:
        line, student_cfg = _lm_model_line("student", student.model)
        lines.append(line)
    else:
        lines.append("student: cut from the teacher")
    if student_cfg is not None:
        _check_student(student_cfg, student)
    if (
        config.teacher.model
        and config.method.name in METHODS
        and METHODS.get(config.method.name).needs_teacher
    ):
        lines.append(_tokenizer_line(config))
    return lines + _artifact_lines(config)


def _local_tokenizer(name: str) -> Any | None:
    """The tokenizer of a local dir or an already converted asset; None when loading it means converting
    an asset (minutes) or reaching the hub."""
    if is_asset(name, "model"):
        asset = ASSETS[name]
        if asset.converted is not None and not (converted_path(asset) / "config.json").is_file():
            return None
    elif not Path(name).expanduser().exists():
        return None
    return with_pad_token(load_tokenizer(name))


def _tokenizer_line(config: Config) -> str:
    """How the teacher's tokens meet the student's: one tokenizer, or aligned spans and the shared entries."""
    teacher_name = config.teacher.tokenizer or config.teacher.model
    student_name = config.student.tokenizer or config.student.model or teacher_name
    assert teacher_name is not None and student_name is not None
    teacher_tok, student_tok = _local_tokenizer(teacher_name), _local_tokenizer(student_name)
    if teacher_tok is None or student_tok is None:
        return "tokenizers: compared when the run starts (a packaged asset not converted yet, or a hub id)"
    if same_tokenizer(student_tok, teacher_tok):
        return "tokenizers: the same (token-level losses compare positions one to one)"
    check_cross_config(config, student_tok, teacher_tok, cached=bool(config.cache.dir))
    matched = vocabulary_matches(student_tok, teacher_tok)[0].numel()
    return (
        f"tokenizers: different: cross-tokenizer distillation over spans aligned by character offsets; "
        f"{matched:,} of the teacher's {len(teacher_tok):,} vocabulary entries match one of the student's "
        f"{len(student_tok):,} (the hybrid's shared sub-vocabulary)"
    )


def _artifact_lines(config: Config) -> list[str]:
    """What the run will read ahead of training: the method's own artifacts (e.g. a knowledge base), a
    teacher cache. Each must be sound (version, checksums); whether it matches this run's teacher and data
    is checked at run time."""
    lines = METHODS.get(config.method.name).describe_artifacts(config.method) + _source_lines(config)
    for i, entry in enumerate(config.teachers):
        where = (
            f"cache {entry.cache}" if entry.cache else f"server {entry.server}" if entry.server else "live"
        )
        lines.append(f"teachers[{i}]: {entry.model} (weight {entry.weight:g}, {where})")
        lines += [f"teachers[{i}] {line}" for line in _source_lines(entry_config(config, entry))]
    if config.teachers:
        total = config.teacher.weight + sum(e.weight for e in config.teachers)
        lines.append(
            f"teachers: {len(config.teachers) + 1}, combined by teacher.combine={config.teacher.combine} "
            f"(teacher.model's share {config.teacher.weight / total:.3g})"
        )
    return lines


def _source_lines(config: Config) -> list[str]:
    """The run's teacher cache and server: whether they are there and answer."""
    lines = []
    if config.cache.dir:
        if not is_complete(Path(config.cache.dir)):
            lines.append(
                f"warning: cache.dir {config.cache.dir} holds no complete teacher cache yet; build it with "
                "`kdkit cache --config FILE` before `kdkit distill`"
            )
        else:
            cache = TeacherCache.load(config.cache.dir)
            prov = cache.meta["provenance"]
            what = (
                f"top-{prov['top_k']} {prov['dtype']}, T={prov['temperature']}, {cache.meta.get('format', 'plain')} format"
                if prov["kind"] == "topk"
                else "logits"
            )
            lines.append(f"teacher cache: {config.cache.dir} ({len(cache)} examples, {what})")
    if config.teacher.server:
        lines.append(_server_line(config))
    return lines


def _server_line(config: Config) -> str:
    """Whether the served teacher answers now (one quick try; its fingerprints are checked at run time)."""
    url = str(config.teacher.server)
    client = TeacherClient(url, retry_seconds=0)
    if not client.health():
        return f"warning: teacher.server {url} does not answer now; start `kdkit teacher serve` before distilling"
    if config.teacher.server_api == "vllm":
        return f"teacher server: {url} (vLLM, top-{config.cache.top_k})"
    try:
        info = client.info()
    except KdkitError as err:
        return f"warning: {err}"
    return f"teacher server: {url} serves {info.get('model')} (vocabulary {info.get('vocab_size')}, top-{config.cache.top_k})"


def shipped_configs() -> list[Path]:
    """The recipes in the repository's configs/ (next to src/), or ./configs."""
    roots = [Path(__file__).resolve().parents[2] / "configs", Path("configs")]
    for root in roots:
        if root.is_dir():
            return sorted(root.glob("*.yaml"))
    return []
