"""What a finished run dir says about itself: the method it was trained with (from its config.yaml)."""

from __future__ import annotations

from pathlib import Path

from kdkit.config import MethodConfig, read_yaml, resolve_method
from kdkit.layout import CONFIG
from kdkit.methods import METHODS
from kdkit.methods.base import Method


def run_method(run_dir: Path) -> tuple[type[Method], MethodConfig] | None:
    """The registered method a run dir was distilled with, and its settings; None for a dir that is not a
    kdkit distill run (a plain Hugging Face model, a fine-tuned one)."""
    saved = run_dir / CONFIG
    if not saved.is_file():
        return None
    raw = read_yaml(saved).get("method")
    name = raw.get("name") if isinstance(raw, dict) else raw
    if not isinstance(name, str) or name not in METHODS:
        return None
    return METHODS.get(name), resolve_method(raw)
