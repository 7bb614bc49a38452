"""A small generic name -> object registry with duplicate-name errors and did-you-mean lookups."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from kdkit.errors import KdkitError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; ``kind`` names the things it holds in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
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
