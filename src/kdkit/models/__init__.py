"""Loading teachers and students: names, assets, layer selection, frozen teachers, causal-LM pairs."""

from kdkit.models.causal_lm import (
    LMOutputs,
    build_lm_student,
    check_lm_pair,
    chunkable,
    config_with_overrides,
    lm_forward,
    load_causal_lm,
    with_pad_token,
)
from kdkit.models.load import (
    build_student,
    count_parameters,
    even_layers,
    freeze,
    has_trained_head,
    load_classifier,
    load_model_config,
    load_teacher_classifier,
    load_tokenizer,
    resolve_model_name,
    save_model,
    select_layers,
)

__all__ = [
    "LMOutputs",
    "build_lm_student",
    "build_student",
    "check_lm_pair",
    "chunkable",
    "config_with_overrides",
    "count_parameters",
    "even_layers",
    "freeze",
    "has_trained_head",
    "lm_forward",
    "load_causal_lm",
    "load_classifier",
    "load_model_config",
    "load_teacher_classifier",
    "load_tokenizer",
    "resolve_model_name",
    "save_model",
    "select_layers",
    "with_pad_token",
]
