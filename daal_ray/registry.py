"""One small registry type for datasets, task models and strategies: looked up by name,
listed with a one-line description, and an unknown name refused with the registered ones."""

from __future__ import annotations

from typing import Generic, Optional, TypeVar

from daal_ray.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, with descriptions.

    Args:
        kind: what is registered, singular (used in messages: "unknown dataset 'x'").
        plural: its plural, when not ``kind + "s"``.
    """

    def __init__(self, kind: str, plural: Optional[str] = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def add(self, name: str, item: T, description: str = "") -> T:
        if not name:
            raise ValueError(f"a {self.kind} needs a name")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        doc = (getattr(item, "__doc__", None) or "").strip()
        self._descriptions[name] = description or (doc.splitlines()[0] if doc else "")
        return item

    def names(self) -> list[str]:
        return sorted(self._items)

    def descriptions(self) -> dict[str, str]:
        return {n: self._descriptions[n] for n in self.names()}

    def check(self, name: str) -> None:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; registered {self.plural}: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        self.check(name)
        return self._items[name]
