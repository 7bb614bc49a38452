"""Distillation methods, one module each, registered by name (explicit imports, no import side effects).

To add a method: write ``methods/<name>.py`` with ``Config``, ``Loss``, ``check`` and ``needs_teacher``
(see ``methods/base.py``), put its math in ``kdkit/losses/``, and register it below.
"""

from types import ModuleType

from kdkit.methods import kd
from kdkit.registry import Registry

METHODS: Registry[ModuleType] = Registry("method")
METHODS.register("kd", kd)

__all__ = ["METHODS"]
