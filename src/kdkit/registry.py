"""A small generic name -> object registry: checks what it holds when it is registered (one-line errors),
refuses duplicate names, and suggests the closest name for a miss (did you mean)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kdkit.errors import KdkitError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; ``kind`` names the things it holds in error messages.

    ``check(name, item)``, when given, runs at registration and raises ``KdkitError`` for an item that does
    not conform (so a bad entry fails at import time, not in the middle of a run).
    """

    def __init__(self, kind: str, check: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self._check = check
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if self._check is not None:
            self._check(name, item)
        if name in self._items:
            raise KdkitError(f"{self.kind} '{name}' is registered twice; pick another name")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise KdkitError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; known: {known}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
