"""The check every method class passes when it is registered (``kdkit.methods.register``), at import time:
a ``Method`` subclass with a name, a paper, a ``MethodConfig`` whose name matches, a non-empty set of known
tasks and a ``forward``; an overridden hook keeps the base class's kind (method or classmethod) and
parameters. A class that does not conform is refused in one line naming what is wrong."""

from __future__ import annotations

import inspect
from typing import Any

from kdkit.config import check_method_config
from kdkit.errors import KdkitError
from kdkit.methods.base import HOOKS, TASKS, Method


def _refuse(name: str, what: str) -> KdkitError:
    return KdkitError(f"method '{name}' does not conform to kdkit.methods.base.Method: {what}")


def _parameters(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def check_method(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise _refuse(name, f"{cls!r} is not a subclass of Method")
    if getattr(cls, "name", None) != name:
        raise _refuse(name, f"its class attribute name is {getattr(cls, 'name', None)!r}")
    if not isinstance(getattr(cls, "paper", None), str) or not cls.paper.strip():
        raise _refuse(name, "it cites no paper (set the class attribute paper)")
    if not hasattr(cls, "Config"):
        raise _refuse(name, "it has no Config")
    check_method_config(name, cls.Config)
    tasks = getattr(cls, "tasks", None)
    if not isinstance(tasks, frozenset) or not tasks or not tasks <= TASKS:
        raise _refuse(name, f"tasks must be a non-empty frozenset of {sorted(TASKS)}, got {tasks!r}")
    if cls.forward is Method.forward:
        raise _refuse(name, "it defines no forward(student_out, teacher_out, batch)")
    for hook in HOOKS:
        base = inspect.getattr_static(Method, hook)
        mine = inspect.getattr_static(cls, hook)
        if mine is base:
            continue
        if isinstance(base, classmethod) != isinstance(mine, classmethod):
            kind = "a classmethod" if isinstance(base, classmethod) else "a plain method"
            raise _refuse(name, f"hook {hook} must be {kind}, as on Method")
        if _parameters(getattr(cls, hook)) != _parameters(getattr(Method, hook)):
            raise _refuse(
                name,
                f"hook {hook}{inspect.signature(getattr(cls, hook))} does not take the parameters of "
                f"Method.{hook}{inspect.signature(getattr(Method, hook))}",
            )
