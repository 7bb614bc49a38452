"""Distillation methods, one class each (``kdkit.methods.base.Method``), registered by name here (explicit
imports, no import side effects).

To add a method: write ``methods/<name>.py`` with a ``Method`` subclass (its ``Config``, ``tasks``, ``paper``
and ``forward``; see ``methods/base.py``), put its math in ``kdkit/losses/``, and register it below. The
registry checks the class against the contract now, at import time.
Classifiers: ``kd``, ``mixkd``, ``reaugkd``. Causal LMs (token level, ``methods/lm_base.py``): ``forward_kl``,
``reverse_kl``, ``jsd``, ``skew_kl``, ``tvd``, ``atkd``, ``uld`` (also across tokenizers).
"""

from kdkit.config import METHOD_CONFIGS
from kdkit.methods.atkd import ATKD
from kdkit.methods.base import Method
from kdkit.methods.forward_kl import ForwardKL
from kdkit.methods.jsd import JSD
from kdkit.methods.kd import KD
from kdkit.methods.mixkd import MixKD
from kdkit.methods.reaugkd import ReAugKD
from kdkit.methods.registry import check_method
from kdkit.methods.reverse_kl import ReverseKL
from kdkit.methods.skew_kl import SkewKL
from kdkit.methods.tvd import TVD
from kdkit.methods.uld import ULD
from kdkit.registry import Registry

METHODS: Registry[type[Method]] = Registry("method", check=check_method)


def register(cls: type[Method]) -> type[Method]:
    """Register a method class (checked against the contract) and its Config (for ``load_config``)."""
    check_method(getattr(cls, "name", repr(cls)), cls)  # both registries, or neither
    METHODS.register(cls.name, cls)
    METHOD_CONFIGS.register(cls.name, cls.Config)
    return cls


for _cls in (KD, MixKD, ReAugKD, ForwardKL, ReverseKL, JSD, SkewKL, TVD, ATKD, ULD):
    register(_cls)

__all__ = ["METHODS", "Method", "register"]
