"""Loading causal-LM teachers and students (GPT/Llama-like) and checking that a pair can be distilled.

A name is resolved as for classifiers (``resolve_model_name``): a named asset such as ``smollm2-135m``
(converted once from GGUF, see ``kdkit.assets``), a local dir, or a hub id. A student is the teacher with
some decoder layers kept (``layers`` / ``num_layers``), a fresh model from the teacher's config
(``init: random`` + ``config_overrides``), or any pretrained causal LM that shares the teacher's tokenizer.

Token-level distillation compares the two next-token distributions position by position, so both models
must split text into the same tokens; cross-tokenizer distillation (e.g. ULD, DSKD) is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kdkit.align import require_offsets
from kdkit.config import ModelConfig
from kdkit.data.encode import same_tokenizer
from kdkit.errors import KdkitError
from kdkit.losses.topk import TopKTeacher
from kdkit.models.load import (
    PER_LAYER_CONFIG_KEYS,
    even_layers,
    load_error,
    load_model_config,
    resolve_model_name,
    select_layers,
)


@dataclass
class LMOutputs:
    """One model's outputs for the token loss: hidden states + LM head, or full logits."""

    hidden: Tensor | None  # (B, T, D) final hidden states (after the final norm)
    weight: Tensor | None  # (V, D) LM head
    bias: Tensor | None  # (V,) or None
    logits: Tensor | None = None  # (B, T, V) when the model cannot be chunked
    topk: TopKTeacher | None = None  # teacher read from a cache (`kdkit cache`): top-k of counted tokens


def lm_logits(out: LMOutputs) -> Tensor:
    """(B, T, V) logits of ``out``: its logits, or its hidden states through its LM head."""
    if out.logits is not None:
        return out.logits
    assert out.hidden is not None and out.weight is not None, "top-k outputs have no logits"
    logits = out.hidden @ out.weight.T
    return logits if out.bias is None else logits + out.bias


def chunkable(model: nn.Module) -> bool:
    """True when the model's logits are exactly ``lm_head(final hidden state)``."""
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1.0):
        return False
    head = model.get_output_embeddings()
    return isinstance(head, nn.Linear)


def lm_forward(model: nn.Module, inputs: dict[str, Tensor], chunked: bool) -> LMOutputs:
    """Final hidden states and LM head (chunked path) or full logits (fallback) of a causal LM."""
    if chunked and chunkable(model):
        hidden = model.base_model(**inputs).last_hidden_state
        head = model.get_output_embeddings()
        return LMOutputs(hidden, head.weight, head.bias)
    return LMOutputs(None, None, None, model(**inputs).logits)


def with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Batching needs a pad token: models without one (Llama, SmolLM2) pad with EOS. Padding is masked
    out of attention and labels, so the choice does not change the loss."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise KdkitError(
                "the tokenizer has neither a pad nor an EOS token; set one with tokenizer.add_special_tokens"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def config_with_overrides(config: PretrainedConfig, overrides: dict[str, Any] | None) -> PretrainedConfig:
    """A new config of the same class with ``overrides`` applied; unknown keys raise ``KdkitError``.

    The config is rebuilt (not patched in place) so that derived fields follow the overrides: a new
    ``num_hidden_layers`` regenerates per-layer lists such as ``layer_types`` unless they are overridden too.
    """
    overrides = dict(overrides or {})
    for key in overrides:
        if not hasattr(config, key):
            raise KdkitError(
                f"config_overrides: '{key}' is not a field of {type(config).__name__}; "
                "see the model's config.json for the fields it has"
            )
    settings = config.to_dict()
    if "num_hidden_layers" in overrides:
        for key in PER_LAYER_CONFIG_KEYS:
            if key not in overrides:
                settings.pop(key, None)
    settings.update(overrides)
    for key in ("_name_or_path", "transformers_version", "architectures"):
        settings.pop(key, None)
    return AutoConfig.for_model(**settings)


def load_causal_lm(
    name: str,
    *,
    init: str = "pretrained",
    config_overrides: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """A causal LM (``AutoModelForCausalLM``) from a name (asset, local dir or hub id).

    ``init="random"`` builds fresh weights from the named model's config with ``config_overrides``
    applied (e.g. ``{"hidden_size": 256, "num_hidden_layers": 4}``). ``dtype`` None keeps the
    checkpoint's dtype (transformers 5 default "auto"); pass ``torch.float32`` for a student to train.
    """
    if init not in ("pretrained", "random"):
        raise KdkitError(f"init must be 'pretrained' or 'random', got '{init}'")
    kwargs = {} if dtype is None else {"dtype": dtype}
    if init == "random":
        config = config_with_overrides(load_model_config(name), config_overrides)
        return AutoModelForCausalLM.from_config(config, **kwargs)
    if config_overrides:
        raise KdkitError("config_overrides changes the architecture, so it needs init: random")
    resolved = resolve_model_name(name)
    try:
        return AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):  # e.g. T5/encoder configs have no causal LM
            raise load_error(name, err) from None
        raise KdkitError(
            f"model '{name}' is not a causal LM ({str(err).splitlines()[0][:160]}); "
            "use a GPT/Llama-like model for task causal_lm"
        ) from None
    except Exception as err:  # OSError (missing/garbage files, hub), safetensors' errors (truncated weights)
        if not isinstance(err, OSError) and type(err).__name__ != "SafetensorError":
            raise
        raise load_error(name, err) from None


def build_lm_student(cfg: ModelConfig, teacher_name: str) -> tuple[PreTrainedModel, list[int] | None]:
    """The causal-LM student and, when it was cut from the teacher, the teacher layers it kept.

    The student is ``cfg.model`` or (null) the teacher itself, pretrained or random (``cfg.init``), then
    cut to ``cfg.layers`` or to ``cfg.num_layers`` evenly spaced layers (first and last kept).
    """
    name = cfg.model or teacher_name
    model = load_causal_lm(name, init=cfg.init, config_overrides=cfg.config_overrides or None)
    layers = cfg.layers
    if cfg.num_layers is not None:
        layers = even_layers(model.config.num_hidden_layers, cfg.num_layers)
    if layers is not None:
        select_layers(model, layers)
    from_teacher = cfg.model is None and cfg.init == "pretrained"
    return model, (layers if from_teacher else None)


def output_rows(model: PreTrainedModel) -> int:
    """Rows of the output embedding (the logits' last dim), which may exceed the tokenizer's size."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def check_cross_pair(
    student_tok: PreTrainedTokenizerBase,
    teacher_tok: PreTrainedTokenizerBase,
    student: PreTrainedModel,
    teacher: PreTrainedModel | None,
) -> None:
    """Raise when a student and a teacher with different tokenizers cannot be distilled: each tokenizer
    must give character offsets (a fast tokenizer) and an EOS, and fit its own model's output rows."""
    for role, tok, model in (("student", student_tok, student), ("teacher", teacher_tok, teacher)):
        require_offsets(tok, role)
        if tok.eos_token_id is None:
            raise KdkitError(
                f"the {role}'s tokenizer ('{tok.name_or_path}') has no EOS token; a causal LM needs one to "
                "learn where a response ends"
            )
        if model is not None and len(tok) > output_rows(model):
            raise KdkitError(
                f"the {role} has {output_rows(model)} output logits but its tokenizer has {len(tok)} tokens; "
                f"use the {role}'s own tokenizer ({role}.tokenizer: null)"
            )


def check_lm_pair(
    student_tok: PreTrainedTokenizerBase,
    teacher_tok: PreTrainedTokenizerBase,
    student: PreTrainedModel,
    teacher: PreTrainedModel | None,
) -> int:
    """The shared real vocabulary size V = ``len(teacher_tok)``; raises when the pair cannot be distilled.

    Both tokenizers must be the same (same ids for any text). Embedding matrices are often padded to a
    multiple of 64/128 rows, differently in student and teacher, so the losses compare ``logits[..., :V]``;
    V must fit in both models' output rows (the student's only when ``teacher`` is None: a teacher cache).
    """
    if not same_tokenizer(student_tok, teacher_tok):
        raise KdkitError(
            "the student's tokenizer differs from the teacher's: cross-tokenizer distillation is not "
            "supported; use a student with the teacher's tokenizer (e.g. student.model: null with layers)"
        )
    vocab = len(teacher_tok)
    for role, model in (("student", student), ("teacher", teacher)):
        if model is None:
            continue
        rows = output_rows(model)
        if vocab > rows:
            raise KdkitError(
                f"the {role} has {rows} output logits but the tokenizer has {vocab} tokens; "
                f"use a {role} whose vocab_size is at least {vocab}"
            )
    return vocab
