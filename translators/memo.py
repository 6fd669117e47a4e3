"""Values derived from one object, memoised per object.

Files that did not change keep their parsed objects from push to push (the store's
contract), so what is derived from a resource or a spec is derived again only for the
ones that changed. Keyed by identity, and holding the object, so that no other object
can take its id while the entry lives; cleared whole when it grows past its limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class PerObject:
    """`derive(obj)`, computed once per object."""

    def __init__(self, derive: Callable[[Any], Any], limit: int = 200_000) -> None:
        self.derive = derive
        self.limit = limit
        self._known: dict[int, tuple[Any, Any]] = {}

    def __call__(self, obj: Any) -> Any:
        found = self._known.get(id(obj))
        if found is not None and found[0] is obj:
            return found[1]
        value = self.derive(obj)
        if len(self._known) > self.limit:
            self._known.clear()
        self._known[id(obj)] = (obj, value)
        return value
