"""A tiny name -> item registry shared by models, datasets, augmentations, losses and calibrations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(self.kind, name, list(self._items))
        return self._items[name]

    def names(self, sort: bool = True) -> list[str]:
        """Registered names, sorted, or in registration order (``sort=False``: the order they are documented)."""
        return sorted(self._items) if sort else list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
