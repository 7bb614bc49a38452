"""The run configuration: typed dataclasses, YAML + dotted ``key=value`` overrides, validation.

A config is data (``yaml.safe_load``, never executed). Every field below is documented in
``docs/config.md``; a test keeps the two from drifting. Each field's comment is its documentation.

This module knows no method: each method's ``Config`` (a ``MethodConfig``) is registered in
``METHOD_CONFIGS`` by ``kdkit.methods`` when that package is imported (``import kdkit`` does it first), and
``load_config`` turns the ``method`` section into the named method's typed config through it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kdkit.errors import KdkitError, did_you_mean
from kdkit.registry import Registry
from kdkit.structured import from_dict, to_dict

Task = Literal["classification", "regression", "causal_lm"]


@dataclass
class TrainConfig:
    """How to train: optimisation, schedule, evaluation and checkpoint cadence."""

    epochs: float = 3.0  # passes over the training set (fractions allowed); ignored when max_steps is set
    max_steps: int | None = None  # optimizer steps in total; overrides epochs
    batch_size: int = 32  # examples per optimizer step per process (before gradient accumulation)
    grad_accum: int = 1  # gradient accumulation steps; effective batch = batch_size * grad_accum * processes
    lr: float = 5e-5  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW weight decay (not applied to biases and LayerNorm weights)
    warmup_ratio: float = 0.1  # fraction of steps with linear warmup from 0 to lr
    scheduler: Literal["linear", "cosine", "constant"] = "linear"  # decay after warmup
    max_grad_norm: float | None = 1.0  # gradient clipping; null disables it
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # autocast precision (Accelerate)
    eval_every: int | None = None  # evaluate every N steps (and always at the end); null: only at the end
    save_every: int | None = None  # checkpoint every N steps (and at the end); null: only at the end
    keep_checkpoints: int = 2  # how many step checkpoints to keep (oldest deleted first)
    log_every: int = 10  # write a training log line every N steps
    best_metric: str | None = None  # validation metric that picks the best checkpoint; null: task default
    load_best: bool = True  # save the best checkpoint (by best_metric) as the final model, not the last
    seed: int = 42  # seeds data order, dropout and initialisation
    num_threads: int | None = None  # torch CPU threads; null: torch's default

    def __post_init__(self) -> None:
        _check_positive("train.batch_size", self.batch_size)
        _check_positive("train.grad_accum", self.grad_accum)
        _check_positive("train.log_every", self.log_every)
        if self.max_steps is not None:
            _check_positive("train.max_steps", self.max_steps)
        if self.max_steps is None and self.epochs <= 0:
            raise KdkitError(f"config key 'train.epochs' must be > 0, got {self.epochs}")
        if self.lr <= 0:
            raise KdkitError(f"config key 'train.lr' must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise KdkitError(f"config key 'train.warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")
        for key in ("eval_every", "save_every"):
            value = getattr(self, key)
            if value is not None:
                _check_positive(f"train.{key}", value)
        if self.keep_checkpoints < 1:
            raise KdkitError("config key 'train.keep_checkpoints' must be >= 1 (resume needs one)")


@dataclass
class ModelConfig:
    """A teacher or a student model."""

    model: str | None = None  # hub id, local dir, or named asset (`kdkit ls`); student: null = the teacher
    tokenizer: str | None = None  # tokenizer to use; null: the model's own
    layers: list[int] | None = None  # keep these encoder layers (0-based, in order), e.g. [0, 5]
    num_layers: int | None = None  # keep this many layers, evenly spaced, first and last included
    init: Literal["pretrained", "random"] = "pretrained"  # random: fresh weights from the model's config
    config_overrides: dict[str, Any] = field(default_factory=dict)  # with init=random: e.g. hidden_size
    max_length: int = 128  # tokens per example (longer inputs are truncated and counted)
    finetune: TrainConfig | None = None  # teacher only: fine-tune on the task first (cached in KDKIT_HOME)
    check: bool = True  # teacher only: refuse to distil a teacher not clearly above the majority class
    server: str | None = None  # teacher only, causal_lm: URL of `kdkit teacher serve`; weights not loaded
    server_retry_seconds: float = 300.0  # teacher only: how long training retries an unreachable server
    server_api: Literal["kdkit", "vllm"] = "kdkit"  # teacher only: `kdkit teacher serve`, or vLLM completions
    server_model: str | None = None  # teacher only, vllm: the served model name; null: teacher.model
    weight: float = 1.0  # teacher only, with `teachers`: this teacher's weight (weights are normalised)
    combine: Literal["losses", "mixture"] = "losses"  # teacher only, with `teachers`: docs/teachers.md

    def __post_init__(self) -> None:
        _check_positive("weight", self.weight)
        if self.layers is not None and self.num_layers is not None:
            raise KdkitError("set either 'layers' or 'num_layers' for a model, not both")
        if self.server is not None and not str(self.server).startswith(("http://", "https://")):
            raise KdkitError(
                f"teacher.server must be an http:// URL, e.g. http://127.0.0.1:8008, got '{self.server}'"
            )
        _check_positive("server_retry_seconds", self.server_retry_seconds)
        if self.num_layers is not None:
            _check_positive("num_layers", self.num_layers)
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise KdkitError(f"'layers' must be a non-empty list of layer indices >= 0, got {self.layers}")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            twice = sorted({i for i in self.layers if self.layers.count(i) > 1})
            raise KdkitError(
                f"'layers' lists layer(s) {twice} more than once ({self.layers}); keep each layer once"
            )
        for key, value in self.config_overrides.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and value <= 0
                and _is_size(key)
            ):
                raise KdkitError(f"'config_overrides.{key}' must be > 0 (a size), got {value}")
        _check_positive("max_length", self.max_length)
        if self.config_overrides and self.init != "random" and "num_labels" not in self.config_overrides:
            raise KdkitError(
                "'config_overrides' changes the architecture, so it needs init: random "
                "(pretrained weights would not fit)"
            )


@dataclass
class TeacherEntry:
    """One more teacher beside ``teacher`` (the ``teachers`` list), with the same tokenizer; its outputs come
    from the live model, a `kdkit cache` dir or a served teacher (docs/teachers.md)."""

    model: str = ""  # hub id, local dir or asset (a cache's or server's teacher is checked against it)
    weight: float = 1.0  # its weight in the combination (all weights, teacher.weight too, sum to 1)
    cache: str | None = None  # a `kdkit cache` dir built for this teacher; null (and no server): live
    server: str | None = None  # causal_lm: URL of `kdkit teacher serve` serving this teacher
    server_api: Literal["kdkit", "vllm"] = "kdkit"  # with server: `kdkit teacher serve`, or vLLM completions
    server_model: str | None = None  # with server_api vllm: the served model name; null: model

    def __post_init__(self) -> None:
        if not self.model:
            raise KdkitError("each entry of 'teachers' needs a model (hub id, local dir or asset)")
        _check_positive("teachers[].weight", self.weight)
        if self.cache is not None and self.server is not None:
            raise KdkitError(
                f"teachers entry '{self.model}': set cache or server, not both (each replaces the live teacher)"
            )
        if self.server is not None and not str(self.server).startswith(("http://", "https://")):
            raise KdkitError(
                f"teachers entry '{self.model}': server must be an http:// URL, got '{self.server}'"
            )


@dataclass
class SplitConfig:
    """A seeded split of the training file for the splits that have no file of their own."""

    validation: float = 0.1  # fraction of train held out as validation when data.validation is null
    test: float = 0.0  # fraction of train held out as test when data.test is null
    seed: int = 42  # seed of the split (independent of train.seed)

    def __post_init__(self) -> None:
        if self.validation < 0 or self.test < 0 or self.validation + self.test >= 1:
            raise KdkitError(
                f"data.split fractions must be >= 0 and sum to < 1, got "
                f"validation={self.validation}, test={self.test}"
            )


@dataclass
class DataConfig:
    """Where the examples come from and which columns hold what."""

    root: str | None = None  # base dir for relative file paths; null: $KDKIT_DATA_ROOT, else the cwd
    dataset: str | None = None  # Hugging Face dataset name (hub or local dir); null: read files
    subset: str | None = None  # the dataset's configuration name, e.g. 'sst2' for 'glue'
    train: str | None = None  # file path or named dataset asset; with `dataset`: the split name
    validation: str | None = None  # file path or split name; null: split off train (see data.split)
    test: str | None = None  # file path or split name; null: split off train if data.split.test > 0
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = "auto"  # auto: from the extension
    header: bool = True  # csv/tsv: the first row names the columns; false: columns are named 0, 1, 2, ...
    encoding: str = "utf-8"  # text encoding of csv/tsv/jsonl files (a BOM is skipped)
    text: str = "text"  # column with the text (headerless files: the column number)
    text_pair: str | None = None  # column with the second text of a pair (e.g. MRPC, STS-B)
    label: str = "label"  # column with the class label (string or int) or the regression target
    label_names: list[str] | None = None  # class order (ids 0..C-1); null: sorted label values of train
    split: SplitConfig = field(default_factory=SplitConfig)  # seeded split for missing splits
    max_train_samples: int | None = None  # seeded random subset of train (e.g. limited-data runs)
    max_eval_samples: int | None = None  # seeded random subset of validation and test
    prompt: str = "prompt"  # causal_lm: field with the prompt (the model's input; not trained on)
    response: str | None = "output"  # causal_lm: field with the response (trained on); null: plain text
    prompt_template: str | None = None  # causal_lm: build the prompt from fields, e.g. "Q: {question}\nA: "
    chat_template: bool = False  # causal_lm: wrap the prompt as a user turn of the chat template
    train_on_prompt: bool = False  # causal_lm: train on the prompt's tokens too (eval stays on responses)
    local: dict[str, Any] = field(default_factory=dict)  # a local copy's keys, used when under the data root

    def __post_init__(self) -> None:
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None:
                _check_positive(f"data.{key}", value)
        allowed = [f.name for f in dataclasses.fields(self) if f.name not in _NOT_LOCAL]
        for key in self.local:
            if key not in allowed:
                raise KdkitError(
                    f"config key 'data.local.{key}' is not a key a local copy sets{did_you_mean(key, allowed)}; "
                    f"known keys here: {', '.join(allowed)}"
                )


_NOT_LOCAL = ("root", "local", "dataset", "subset")  # a local copy is files under the data root


def local_copy(data: DataConfig) -> DataConfig:
    """``data`` with its ``local`` keys applied when a data root is set (``data.root`` or
    ``$KDKIT_DATA_ROOT``) and the local copy's train file is there; otherwise ``data`` as is.

    Recipes name the real source (e.g. ``dataset: nyu-mll/glue``, ``subset: sst2``) and, under ``local``,
    where a copy of the same data sits under a data root and how its columns are named, so that they run
    offline from a local copy and elsewhere from the hub. The resolved config (written to the run dir) is
    the one that was read: ``dataset: null`` and the local files.
    """
    root = data_root(data)
    train = data.local.get("train", data.train)
    if not data.local or root is None or not isinstance(train, str) or not (root / train).is_file():
        return data
    merged = {**to_dict(data), "dataset": None, "subset": None, **data.local, "local": {}}
    return from_dict(DataConfig, merged, "data")


@dataclass
class EvalConfig:
    """What to measure on held-out data."""

    batch_size: int = 64  # examples per forward pass in evaluation
    splits: list[str] = field(default_factory=lambda: ["validation", "test"])  # splits reported at the end
    metrics: list[str] | None = None  # metric names; null: the task's defaults (see docs)
    agreement: bool = True  # report student-teacher agreement when a teacher is loaded
    max_new_tokens: int = 64  # causal_lm: greedy generation length for ROUGE-L (prompt: max_length - this)
    rouge: bool = True  # causal_lm: report ROUGE-L of greedy generations (costs a generation pass)
    teacher: bool = True  # also report the teacher's metrics on the eval splits
    datasets: dict[str, str] = field(default_factory=dict)  # causal_lm: more eval files, name -> path

    def __post_init__(self) -> None:
        _check_positive("eval.batch_size", self.batch_size)
        _check_positive("eval.max_new_tokens", self.max_new_tokens)
        for split in self.splits:
            if split not in ("train", "validation", "test"):
                raise KdkitError(f"eval.splits: unknown split '{split}'; use train, validation or test")


@dataclass
class GenerationConfig:
    """causal_lm: where the training responses come from, and how models generate them."""

    source: Literal["ground_truth", "teacher"] = "ground_truth"  # teacher: sequence-level KD (generated once)
    on_policy: float = 0.0  # probability per batch that the student's own generations replace the responses
    max_new_tokens: int = 128  # tokens generated per response
    temperature: float = 1.0  # sampling temperature; 0 means greedy
    top_p: float = 1.0  # nucleus sampling threshold (1 keeps the whole distribution)
    seed: int = 0  # seed of the sampling
    batch_size: int = 16  # prompts per generate call

    def __post_init__(self) -> None:
        if not 0.0 <= self.on_policy <= 1.0:
            raise KdkitError(f"config key 'generation.on_policy' must be in [0, 1], got {self.on_policy}")
        if self.temperature < 0:
            raise KdkitError(f"config key 'generation.temperature' must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise KdkitError(f"config key 'generation.top_p' must be in (0, 1], got {self.top_p}")
        _check_positive("generation.max_new_tokens", self.max_new_tokens)
        _check_positive("generation.batch_size", self.batch_size)


@dataclass
class CacheConfig:
    """Teacher outputs computed once by `kdkit cache` and read in training instead of running the teacher."""

    dir: str | None = None  # written by `kdkit cache`, read by distill (teacher not loaded); null: live

    top_k: int = 64  # causal_lm: teacher log-probabilities kept per token (the rest is one known tail mass)
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # causal_lm: storage of the log-probs
    tail: Literal["student", "uniform"] = "student"  # causal_lm: how losses spread the dropped mass
    shard_size: int = 1024  # examples per shard file (the unit of resume and of work split across processes)
    batch_size: int = 16  # examples per teacher forward pass while building
    format: Literal["plain", "compact"] = "plain"  # causal_lm: compact: ~1/3 of the bytes (docs/cache.md)

    def __post_init__(self) -> None:
        _check_positive("cache.top_k", self.top_k)
        _check_positive("cache.shard_size", self.shard_size)
        _check_positive("cache.batch_size", self.batch_size)


@dataclass
class MethodConfig:
    """The ``method`` section. ``name`` picks a registered method; each method's ``Config`` subclasses this
    with its own fields, defaulted from its paper and range-checked in ``__post_init__``."""

    name: str = ""  # method name (`kdkit ls`)


def check_method_config(name: str, cls: type[MethodConfig]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, MethodConfig) and dataclasses.is_dataclass(cls)):
        raise KdkitError(
            f"method '{name}': its Config must be a dataclass subclassing kdkit.config.MethodConfig"
        )
    if cls().name != name:
        raise KdkitError(f"method '{name}': its Config's name defaults to '{cls().name}', not '{name}'")


# name -> the method's Config class; filled by kdkit.methods (this module imports no method)
METHOD_CONFIGS: Registry[type[MethodConfig]] = Registry("method", check=check_method_config)


@dataclass
class Config:
    """One run: a task, a teacher, a student, data, a distillation method, training and evaluation."""

    task: Task = "classification"  # classification (C classes), regression (one real target) or causal_lm
    output_dir: str = "runs/kdkit"  # where the student, metrics, config, logs and checkpoints go
    teacher: ModelConfig = field(default_factory=ModelConfig)  # the model that teaches (frozen, eval mode)
    student: ModelConfig = field(default_factory=ModelConfig)  # the model that learns and is saved
    data: DataConfig = field(default_factory=DataConfig)  # dataset, columns, splits
    method: MethodConfig = field(default_factory=lambda: default_method())  # `name` + its fields (`kdkit ls`)
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and checkpoints
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # causal_lm: training responses
    cache: CacheConfig = field(default_factory=CacheConfig)  # teacher output cache (`kdkit cache`)
    teachers: list[TeacherEntry] = field(default_factory=list)  # more teachers, combined (docs/teachers.md)

    def __post_init__(self) -> None:
        if not isinstance(self.method, MethodConfig):  # Config(method={"name": ...}) from Python
            self.method = resolve_method(self.method)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _is_size(key: str) -> bool:
    """A model config field that counts or sizes something (hidden_size, num_hidden_layers, vocab_size, ...)."""
    return key.endswith(("_size", "_layers", "_heads", "_dim", "_embeddings")) or key.startswith("num_")


def _check_positive(key: str, value: int) -> None:
    if value <= 0:
        raise KdkitError(f"config key '{key}' must be > 0, got {value}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> ``(["train", "lr"], 1e-4)``; the value is read as YAML."""
    if "=" not in text:
        raise KdkitError(f"override '{text}' must look like key=value, e.g. train.lr=3e-5")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise KdkitError(f"override '{text}': bad key '{key}'")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted overrides set (sections are created when missing)."""
    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {} if node.get(k) is None else node[k]
            if not isinstance(node[k], dict):
                raise KdkitError(f"override '{text}': '{k}' is not a section")
            node = node[k]
        node[keys[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise KdkitError(
            f"config file '{path}' is a directory; pass a YAML file (`kdkit ls` lists the shipped configs)"
        )
    if not path.is_file():
        raise KdkitError(f"config file '{path}' does not exist; `kdkit ls` lists the shipped configs")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise KdkitError(
            f"config file '{path}' is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise KdkitError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KdkitError(f"config file '{path}' must hold a mapping of sections, got {type(data).__name__}")
    return data


def default_method() -> MethodConfig:
    """The method of a config that names none: ``kd`` with its paper's defaults."""
    return resolve_method("kd")


def resolve_method(raw: Any) -> MethodConfig:
    """Turn ``{"name": ..., **fields}`` (or a bare name) into that method's typed Config (defaults from
    its paper), through ``METHOD_CONFIGS``."""
    if isinstance(raw, MethodConfig):
        return raw
    if isinstance(raw, str):
        raw = {"name": raw}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise KdkitError(f"config key 'method' must be a mapping with a 'name', got {raw!r}")
    name = raw.get("name", "kd")
    return from_dict(METHOD_CONFIGS.get(str(name)), {**raw, "name": str(name)}, "method")


def load_config(
    source: str | Path | dict[str, Any] | Config | None = None, overrides: list[str] | None = None
) -> Config:
    """Load a config from a YAML path, a dict or a Config, apply ``key=value`` overrides, validate types.

    Raises ``KdkitError`` with the dotted key for unknown keys (with "did you mean"), wrong types and
    out-of-range values. Paths and models are checked by ``kdkit.validate``.
    """
    if isinstance(source, Config):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)
    elif source is None:
        raw = {}
    else:
        raw = read_yaml(source)
    raw = apply_overrides(raw, overrides or [])
    method = resolve_method(raw.pop("method", None))  # the named method's own typed section
    config = from_dict(Config, raw)
    config.method = method
    config.data = local_copy(config.data)
    return config


def data_root(data: DataConfig) -> Path | None:
    """The base directory for relative data paths: data.root, else $KDKIT_DATA_ROOT, else None (cwd)."""
    root = data.root or os.environ.get("KDKIT_DATA_ROOT")
    return Path(root).expanduser() if root else None


def kdkit_home() -> Path:
    """Cache root for fine-tuned teachers and converted assets: $KDKIT_HOME or ~/.cache/kdkit."""
    return Path(os.environ.get("KDKIT_HOME") or Path.home() / ".cache" / "kdkit").expanduser()
