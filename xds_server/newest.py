"""One item per node id: during a reconnect a node may briefly have two streams."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def newest_per_node(items: Iterable[T], node_id: Callable[[T], str]) -> dict[str, T]:
    """One item per node id, the most recently connected: during a reconnect a node may
    briefly have an old stream and a new one."""
    newest: dict[str, T] = {}
    for item in sorted(items, key=lambda i: i.connected_at):
        newest[node_id(item)] = item
    return newest
