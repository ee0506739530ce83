"""A tiny name -> item registry shared by models, datasets, augmentations, losses, calibrations, teacher
sources and runtimes.

An entry's *name* (with a one-line help) can be declared before the module that makes its item is
imported: ``Registry(kind, home="kdexport.data.datasets")`` plus ``declare(name, help)`` in a light module
(a stage's ``__init__``). Listing and checking names then costs no import, so ``kdexport --help`` lists
the choices and a config is validated without loading torch; the first :meth:`Registry.get` of a declared
name imports ``home``, whose ``@REG.register(name)`` supplies the item. A name may also be registered
without a declaration (a plugin, a test), as before.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, home: str | None = None):
        self.kind = kind
        self.home = home  # the module whose import registers the declared items
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}  # every known name, in declaration (or registration) order
        self._homes: dict[str, str] = {}  # a declared name's own home, where it is not ``home``

    def declare(self, name: str, help: str = "", home: str | None = None) -> None:
        """Offer ``name`` (with its one-line help) before its item exists; :meth:`get` imports its ``home`` (the
        registry's, unless given here) for it."""
        if name in self._help:
            raise ValueError(f"{self.kind} {name!r} declared twice")
        self._help[name] = help
        if home is not None:
            self._homes[name] = home

    def add(self, name: str, item: T, help: str | None = None) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = item
        if help is not None or name not in self._help:
            self._help[name] = help or self._help.get(name, "")
        return item

    def register(self, name: str, help: str | None = None) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item, help)

    def check(self, name: str) -> str:
        """``name`` if it is known (declared or registered), else UnknownNameError listing the choices. Imports
        nothing."""
        if name not in self._help:
            raise UnknownNameError(self.kind, name, list(self._help))
        return name

    def get(self, name: str) -> T:
        self.check(name)
        home = self._homes.get(name, self.home)
        if name not in self._items and home is not None:
            importlib.import_module(home)
        if name not in self._items:
            raise LookupError(f"{self.kind} {name!r} is declared, but {home} registers no item for it")
        return self._items[name]

    def names(self, sort: bool = True) -> list[str]:
        """Known names, sorted, or in declaration order (``sort=False``: the order they are documented)."""
        return sorted(self._help) if sort else list(self._help)

    def help(self, name: str) -> str:
        """The one-line help of ``name`` ("" when it has none)."""
        return self._help[self.check(name)]

    def described(self) -> str:
        """``name (help); name; ...`` in declaration order: what an option's help lists."""
        return "; ".join(f"{n}: {h}" if h else n for n, h in self._help.items())

    def __contains__(self, name: str) -> bool:
        return name in self._help
