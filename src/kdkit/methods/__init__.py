"""Distillation methods, one module each, registered by name (explicit imports, no import side effects).

To add a method: write ``methods/<name>.py`` with ``Config``, ``Loss``, ``check`` and ``needs_teacher``
(see ``methods/base.py``), put its math in ``kdkit/losses/``, and register it below.
Classifiers: ``kd``, ``mixkd``, ``reaugkd``. Causal LMs (token level, ``methods/lm_base.py``): ``forward_kl``, ``reverse_kl``,
``jsd``, ``skew_kl``, ``tvd``, ``atkd``.
"""

from types import ModuleType

from kdkit.methods import atkd, forward_kl, jsd, kd, mixkd, reaugkd, reverse_kl, skew_kl, tvd
from kdkit.registry import Registry

METHODS: Registry[ModuleType] = Registry("method")
for _module in (kd, mixkd, reaugkd, forward_kl, reverse_kl, jsd, skew_kl, tvd, atkd):
    METHODS.register(_module.Config.name, _module)

__all__ = ["METHODS"]
