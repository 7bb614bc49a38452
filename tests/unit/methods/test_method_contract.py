"""The method contract is checked when a method is registered: a class that does not conform is refused, at
import time, in one line naming what is wrong; every registered method declares its families, teacher, cache
and hidden-state needs on the class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from kdkit.config import METHOD_CONFIGS, MethodConfig
from kdkit.errors import KdkitError
from kdkit.methods import METHODS, register
from kdkit.methods.base import CLASSIFIER_TASKS, Batch, LossOutput, Method
from kdkit.registry import Registry


@dataclass
class GoodConfig(MethodConfig):
    """A method for these tests."""

    name: str = "good"  # method name


class Good(Method):
    name = "good"
    paper = "Nobody, 2026"
    Config = GoodConfig
    tasks = CLASSIFIER_TASKS

    def forward(self, student_out: Any, teacher_out: Any, batch: Batch) -> LossOutput:
        raise NotImplementedError


@pytest.fixture
def registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register into copies of the registries (restored after the test)."""
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHOD_CONFIGS, "_items", dict(METHOD_CONFIGS._items))


def test_every_registered_method_declares_the_contract() -> None:
    for name in METHODS:
        cls = METHODS.get(name)
        assert issubclass(cls, Method) and cls.name == name and cls.paper
        assert cls.tasks in (CLASSIFIER_TASKS, frozenset({"causal_lm"}), frozenset({"classification"}))
        assert isinstance(cls.needs_teacher, bool) and isinstance(cls.cacheable, bool)
        assert isinstance(cls.needs_hidden_states(cls.Config()), bool)
        assert METHOD_CONFIGS.get(name) is cls.Config
    assert METHODS.get("mixkd").cacheable is False  # the teacher sees inputs made during training
    kd = METHODS.get("kd")
    assert not kd.needs_hidden_states(kd.Config()) and kd.needs_hidden_states(kd.Config(hidden_weight=1.0))
    assert kd.can_use_cache(kd.Config()) and not kd.can_use_cache(kd.Config(hidden_weight=1.0))
    assert METHODS.get("reaugkd").run_files == ("kb",)


def test_a_conforming_method_registers(registries: None) -> None:
    register(Good)
    assert METHODS.get("good") is Good and METHOD_CONFIGS.get("good") is GoodConfig


def _bad(**changes: Any) -> type[Method]:
    return type("Bad", (Good,), changes)


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (_bad(paper=""), "cites no paper"),
        (_bad(tasks=frozenset({"translation"})), "tasks must be a non-empty frozenset"),
        (_bad(tasks=frozenset()), "tasks must be a non-empty frozenset"),
        (_bad(name="other"), "class attribute name is 'other'"),
        (_bad(forward=Method.forward), "defines no forward"),
        (_bad(prepare_batch=lambda self, batch: batch), r"hook prepare_batch\(self, batch\) does not take"),
        (_bad(check=lambda self, config, task: None), "hook check must be a classmethod"),
        (_bad(Config=type("C", (), {})), "must be a dataclass subclassing kdkit.config.MethodConfig"),
    ],
)
def test_a_non_conforming_method_is_refused_in_one_line(registries: None, cls: Any, match: str) -> None:
    name = "good"
    with pytest.raises(KdkitError, match=match) as err:
        METHODS.register(name, cls)
    assert "\n" not in str(err.value) and f"method '{name}'" in str(err.value)
    assert name not in METHODS


def test_a_plain_module_is_not_a_method(registries: None) -> None:
    with pytest.raises(KdkitError, match="is not a subclass of Method"):
        METHODS.register("kd2", pytest)
    with pytest.raises(KdkitError, match="registered twice"):
        register(METHODS.get("kd"))


def test_a_registry_check_runs_at_registration() -> None:
    def positive(name: str, value: int) -> None:
        if value <= 0:
            raise KdkitError(f"widget '{name}' must be positive")

    reg: Registry[int] = Registry("widget", check=positive)
    reg.register("a", 1)
    with pytest.raises(KdkitError, match="must be positive"):
        reg.register("b", 0)
    assert reg.names() == ["a"]
