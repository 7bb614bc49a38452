"""Loading teachers and students: names, assets, layer selection, frozen teachers."""

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
    "build_student",
    "count_parameters",
    "even_layers",
    "freeze",
    "has_trained_head",
    "load_classifier",
    "load_model_config",
    "load_tokenizer",
    "resolve_model_name",
    "select_layers",
]
