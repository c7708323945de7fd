"""A bounded map for state keyed by what events and callers name (models, versions, label sets).

Names come from outside: a producer that sends a new model name, or version number, with every
record must not grow the monitor's memory without end. Past its bound the least recently used
entry is forgotten; whoever needs it again reads it again (from the registry or PostgreSQL).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(MutableMapping[K, V]):
    """At most `bound` entries; reading (`get`, `[]`) or writing an entry makes it the newest.
    `on_evict(key, value)` is called for each entry pushed out by the bound (not for deletions)."""

    def __init__(self, bound: int, *, on_evict: Callable[[K, V], None] | None = None) -> None:
        if bound < 1:
            raise ValueError(f"an LRU bound must be 1 or more, got {bound}")
        self.bound = bound
        self.on_evict = on_evict
        self._items: OrderedDict[K, V] = OrderedDict()

    def __getitem__(self, key: K) -> V:
        value = self._items[key]
        self._items.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        self._trim()

    def __delitem__(self, key: K) -> None:
        del self._items[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    # Scans read the entries as they are: a view that reordered them while iterating would break.
    def keys(self):
        return self._items.keys()

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def peek(self, key: K, default: V | None = None) -> V | None:
        """The entry without making it the newest (for scans that must not reorder)."""
        return self._items.get(key, default)

    def resize(self, bound: int) -> None:
        if bound < 1:
            raise ValueError(f"an LRU bound must be 1 or more, got {bound}")
        self.bound = bound
        self._trim()

    def _trim(self) -> None:
        while len(self._items) > self.bound:
            key, value = self._items.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(key, value)

    def __repr__(self) -> str:
        return f"LRU(bound={self.bound}, size={len(self._items)})"
