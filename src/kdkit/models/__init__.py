"""Loading teachers and students: names, assets, layer selection, frozen teachers, causal-LM pairs."""

from kdkit.models.causal_lm import build_lm_student, check_lm_pair, config_with_overrides, load_causal_lm
from kdkit.models.load import (
    build_student,
    count_parameters,
    even_layers,
    freeze,
    has_trained_head,
    load_classifier,
    load_model_config,
    load_tokenizer,
    resolve_model_name,
    select_layers,
)

__all__ = [
    "build_lm_student",
    "build_student",
    "check_lm_pair",
    "config_with_overrides",
    "count_parameters",
    "even_layers",
    "freeze",
    "has_trained_head",
    "load_causal_lm",
    "load_classifier",
    "load_model_config",
    "load_tokenizer",
    "resolve_model_name",
    "select_layers",
]
