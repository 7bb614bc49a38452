"""Loading teachers and students for sequence classification/regression.

A model name is a named asset (``kdkit ls``), a local directory, or a Hugging Face hub id, in that order.
A student is the teacher's checkpoint with some encoder layers kept (``layers`` / ``num_layers``), a fresh
model from a config (``init: random`` + ``config_overrides``), or any pretrained model.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kdkit.assets import ASSETS, asset_path, is_asset
from kdkit.config import ModelConfig
from kdkit.errors import KdkitError, did_you_mean

log = logging.getLogger(__name__)


def resolve_model_name(name: str, marker: str = "config.json") -> str:
    """Named asset -> its directory; an existing local path -> as is; otherwise a hub id (checked on load).

    A local dir must hold ``marker`` (a tokenizer dir: ``tokenizer_config.json``).
    """
    if is_asset(name, "model"):
        return str(asset_path(name, "model"))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / marker).is_file():
            what = "model" if marker == "config.json" else "tokenizer"
            raise KdkitError(f"{what} dir '{path}' has no {marker}; point to a saved Hugging Face {what}")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise KdkitError(f"model path '{name}' does not exist")
    if "/" not in name and difflib.get_close_matches(name, list(ASSETS), n=1, cutoff=0.75):
        # a near-miss of a named asset is a typo, not a hub id: say so now rather than after a hub lookup
        raise KdkitError(
            f"unknown model '{name}': not a named asset{did_you_mean(name, ASSETS)} and not a local dir; "
            "`kdkit ls` lists the assets"
        )
    return name


def _hub_error(name: str, err: Exception) -> KdkitError:
    return KdkitError(
        f"could not load model '{name}': not a named asset{did_you_mean(name, ASSETS)} (`kdkit ls`), "
        f"not a local dir, and the hub gave: {str(err).splitlines()[0][:200]}"
    )


def load_error(name: str, err: Exception) -> KdkitError:
    """One line for a model that failed to load: a local dir's damaged file named, else the hub's reason."""
    path = Path(resolve_model_name(name)) if Path(name).expanduser().exists() or is_asset(name) else None
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    if path is None:
        return _hub_error(name, err)
    if type(err).__name__ == "SafetensorError":  # a truncated or corrupt weights file
        fix = f"delete '{path}' to convert the asset again" if is_asset(name) else "restore it or retrain"
        return KdkitError(f"the weights in model dir '{path}' are truncated or corrupt ({first}); {fix}")
    return KdkitError(f"could not load the model in local dir '{path}': {first}")


def _from_pretrained(loader: Any, name: str, marker: str = "config.json", **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(resolve_model_name(name, marker), **kwargs)
    except KdkitError:
        raise
    except (OSError, ValueError) as err:
        raise load_error(name, err) from None
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        raise load_error(name, err) from None


def load_tokenizer(name: str, model_config: PretrainedConfig | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of ``name``; with ``model_config``, refused when its vocabulary is implausibly small
    for the model's embeddings (a model dir without its tokenizer files gets a few-token tokenizer from
    transformers, which turns every word into [UNK])."""
    tokenizer = _from_pretrained(AutoTokenizer, name, "tokenizer_config.json")
    rows = getattr(model_config, "vocab_size", None) if model_config is not None else None
    if isinstance(rows, int) and len(tokenizer) < rows // 2:
        raise KdkitError(
            f"the tokenizer of '{name}' has {len(tokenizer)} tokens but its model's embeddings have {rows} rows: "
            "its tokenizer files (tokenizer.json, tokenizer_config.json, vocab) are missing or are not the "
            "model's; save the model's own tokenizer beside it"
        )
    return tokenizer


def load_model_config(name: str) -> PretrainedConfig:
    return _from_pretrained(AutoConfig, name)


def load_trained_classifier(
    path: str, task: str | None = None, label_names: list[str] | None = None
) -> PreTrainedModel:
    """A saved sequence classifier whose head was trained: transformers must find every weight in the
    checkpoint (a base encoder, a causal LM or a packaged asset would get a new, random head)."""
    kwargs = label_kwargs(task, label_names) if task else {}
    if task:
        check_label_space(path, load_model_config(path), task, label_names)
    model, info = _from_pretrained(
        AutoModelForSequenceClassification, path, output_loading_info=True, **kwargs
    )
    fresh = sorted(set(info.get("missing_keys", [])) | set(info.get("mismatched_keys", [])))
    if fresh:
        shown = ", ".join(str(k) for k in fresh[:3]) + (", ..." if len(fresh) > 3 else "")
        raise KdkitError(
            f"model '{path}' has no trained classification head (transformers would initialise {shown} "
            "afresh): evaluate or serve a fine-tuned or distilled model (`kdkit finetune`, `kdkit distill`)"
        )
    return model


def has_trained_head(config: PretrainedConfig) -> bool:
    """True when the checkpoint was saved as a sequence classifier (its head holds trained weights)."""
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def label_kwargs(task: str, label_names: list[str] | None) -> dict[str, Any]:
    """``from_pretrained`` kwargs that set the head size and label names for a task."""
    if task == "regression":
        return {
            "num_labels": 1,
            "problem_type": "regression",
            "id2label": {0: "score"},
            "label2id": {"score": 0},
        }
    assert label_names is not None
    return {
        "num_labels": len(label_names),
        "problem_type": "single_label_classification",
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def check_label_space(name: str, config: PretrainedConfig, task: str, label_names: list[str] | None) -> None:
    """A trained head must fit the data's label space (same count, and same names when it has names)."""
    if not has_trained_head(config):
        return
    want = 1 if task == "regression" else len(label_names or [])
    if config.num_labels != want:
        raise KdkitError(
            f"model '{name}' was trained with {config.num_labels} labels but the data has {want}; "
            "use a model fine-tuned on this task or a base model"
        )
    if task == "classification" and label_names:
        have = [str(config.id2label[i]) for i in range(config.num_labels)]
        generic = all(h == f"LABEL_{i}" for i, h in enumerate(have))
        if not generic and have != list(label_names):
            raise KdkitError(
                f"model '{name}' has labels {have} but the data has {list(label_names)}; "
                "set data.label_names to the model's order"
            )


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList that holds the transformer blocks (BERT/RoBERTa/DistilBERT/most HF encoders)."""
    n = getattr(model.config, "num_hidden_layers", None)
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not candidates:
        raise KdkitError(f"cannot find the {n} transformer layers of {type(model).__name__} to select from")
    return candidates[0]


def even_layers(total: int, keep: int) -> list[int]:
    """``keep`` layer indices out of ``total``, evenly spaced with the first and last included.

    e.g. (6, 2) -> [0, 5]; (6, 3) -> [0, 2, 5]; (12, 4) -> [0, 4, 7, 11].
    """
    if not 1 <= keep <= total:
        raise KdkitError(f"num_layers must be between 1 and {total} (the teacher's depth), got {keep}")
    if keep == 1:
        return [total - 1]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def encoder_depth_check(total: int, layers: list[int] | None, num_layers: int | None) -> None:
    """Raise when a layer selection does not fit a model with ``total`` layers."""
    if num_layers is not None:
        even_layers(total, num_layers)
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < total]
        if bad:
            raise KdkitError(f"layers {bad} do not exist: the model has layers 0..{total - 1}")


# Config fields that hold one entry per layer (transformers 5.x: Qwen2/3, Gemma, GPT-OSS, SmolLM3, ...);
# they must shrink with the layers, or caches and masks are built for the wrong layer kinds.
PER_LAYER_CONFIG_KEYS = (
    "layer_types",
    "mlp_layer_types",
    "no_rope_layers",
    "layer_rope_theta",
    "indexer_types",
)


def select_layers(model: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """Keep only ``layers`` of the transformer blocks (in the given order), in place; updates the config.

    Works for encoders (BERT) and decoders (Llama): each kept block's attention ``layer_idx`` is renumbered
    (the KV cache is indexed by it), ``num_hidden_layers`` is set and per-layer config lists are sliced.
    """
    blocks = encoder_layers(model)
    total = len(blocks)
    encoder_depth_check(total, layers, None)
    kept = [blocks[i] for i in layers]
    for new_idx, block in enumerate(kept):  # some blocks carry their index (caches, attention masks)
        for mod in block.modules():
            if hasattr(mod, "layer_idx") and isinstance(mod.layer_idx, int):
                mod.layer_idx = new_idx
    blocks._modules.clear()
    for i, block in enumerate(kept):
        blocks.add_module(str(i), block)
    for key in PER_LAYER_CONFIG_KEYS:
        value = getattr(model.config, key, None)
        if isinstance(value, list) and len(value) == total:
            setattr(model.config, key, [value[i] for i in layers])
    model.config.num_hidden_layers = len(layers)
    return model


def load_classifier(
    name: str,
    task: str,
    label_names: list[str] | None,
    *,
    init: str = "pretrained",
    config_overrides: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """A sequence classifier (head sized for the task) from a name; random init builds from the config."""
    resolved = resolve_model_name(name)
    kwargs = label_kwargs(task, label_names)
    if init == "random":
        config = load_model_config(name)
        for key, value in (config_overrides or {}).items():
            if not hasattr(config, key):
                raise KdkitError(f"config_overrides: '{key}' is not a field of {type(config).__name__}")
            setattr(config, key, value)
        for key, value in kwargs.items():
            setattr(config, key, value)
        return AutoModelForSequenceClassification.from_config(config)
    config = load_model_config(name)
    check_label_space(name, config, task, label_names)
    # A checkpoint with a trained head keeps it; a base encoder gets a fresh, seeded head.
    return _from_pretrained(AutoModelForSequenceClassification, resolved, **kwargs)


def load_teacher_classifier(name: str, task: str, label_names: list[str] | None) -> PreTrainedModel:
    """A classifier teacher: a checkpoint whose head was trained (a base encoder's fresh head teaches
    noise, so it is refused with the two ways to fine-tune it)."""
    if not has_trained_head(load_model_config(name)):
        raise KdkitError(
            f"teacher '{name}' has no trained classification head; fine-tune it first "
            "(`kdkit finetune`) or set teacher.finetune to fine-tune it on this task before distilling"
        )
    return load_classifier(name, task, label_names)


def save_model(model: PreTrainedModel, tokenizer: Any, path: Path) -> None:
    """A model dir that ``transformers`` loads as-is: weights (safetensors), config and tokenizer."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def freeze(model: nn.Module) -> nn.Module:
    """Frozen and in eval mode (no dropout, no gradients): how a teacher is used."""
    model.eval()
    model.requires_grad_(False)
    return model


def build_student(
    cfg: ModelConfig, teacher_name: str, task: str, label_names: list[str] | None
) -> tuple[PreTrainedModel, list[int] | None]:
    """The student and, when it was cut from the teacher, the teacher layers it was initialised from."""
    name = cfg.model or teacher_name
    model = load_classifier(name, task, label_names, init=cfg.init, config_overrides=cfg.config_overrides)
    layers = cfg.layers
    if cfg.num_layers is not None:
        layers = even_layers(model.config.num_hidden_layers, cfg.num_layers)
    if layers is not None:
        select_layers(model, layers)
    from_teacher = cfg.model is None and cfg.init == "pretrained"
    return model, (layers if from_teacher else None)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
