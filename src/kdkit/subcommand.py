"""Subcommands that a method brings to `kdkit` (its tools, e.g. ReAugKD's `kdkit kb build`): what the
method declares (``Method.commands``) and what the CLI hands it. Kept below the methods and their
packages, so that both can name these types."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accelerate import Accelerator

from kdkit.config import Config


@dataclass
class CommandEnv:
    """What a method's subcommand gets from the CLI besides its arguments: the layers above the method."""

    # the teacher to load for a config (fine-tuned first when ``teacher.finetune`` asks)
    resolve_teacher: Callable[[Config, Accelerator], str]


@dataclass(frozen=True)
class MethodCommand:
    """A `kdkit` subcommand that a method brings (its tools, e.g. building a knowledge base ahead)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    # (parsed arguments, env) -> the JSON summary the CLI prints on stdout
    run: Callable[[argparse.Namespace, CommandEnv], dict[str, Any]]
