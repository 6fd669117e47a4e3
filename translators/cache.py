"""Translation outputs kept from one push to the next, keyed by what they were built from.

A config edit makes a new World, but most services' clusters and endpoints are built
from inputs that did not change (the same Service, the same DestinationRule object, the
same mesh timeout): those are taken from the last push instead of built again. Keys hold
content, or the identity of immutable inputs whose objects the value keeps alive (so an
id cannot be reused while the entry exists).

A config change starts a new round: entries the last round did not use are dropped, so
the cache holds about one push's worth. An endpoint change keeps the round going (its
push reuses routes and clusters without asking the cache, and they must survive until
the next config edit), unless the entries added since the last round outgrow the last
round's size: workloads churning for hours must not grow it without bound.
"""

from __future__ import annotations

from typing import Any


class CrossPushCache:
    def __init__(self) -> None:
        self._current: dict[tuple, Any] = {}
        self._previous: dict[tuple, Any] = {}
        self._round_size = 0
        self.hits = self.misses = 0

    def get(self, key: tuple) -> Any:
        found = self._current.get(key)
        if found is None:
            found = self._previous.get(key)
            if found is not None:
                self._current[key] = found
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: tuple, value: Any) -> None:
        self._current[key] = value

    def next_round(self) -> None:
        """A push for a new config begins: what the last one did not use goes."""
        self._previous, self._current = self._current, {}
        self._round_size = len(self._previous)

    def endpoint_round(self) -> None:
        """A push for an endpoint change begins: the round goes on, unless it grew too."""
        if len(self._current) + len(self._previous) > 2 * max(self._round_size, 4096):
            self.next_round()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
