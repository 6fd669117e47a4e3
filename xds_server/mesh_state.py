"""The live state: current config, connected proxies, and each proxy's resources.

Any change (new config, a proxy connecting or leaving) marks the state dirty; one push
task coalesces bursts, translates once for every proxy (sharing per-namespace work) and
hands new resources only to the proxies whose resources changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from translators import model
from translators.resources import Resources, version_of
from translators.snapshot import Translator, World

log = logging.getLogger(__name__)
T = TypeVar("T")

Listener = Callable[[Resources, int], None]


def newest_per_node(items: Iterable[T], node_id: Callable[[T], str]) -> dict[str, T]:
    """One item per node id, the most recently connected: during a reconnect a node may
    briefly have an old stream and a new one."""
    newest: dict[str, T] = {}
    for item in sorted(items, key=lambda i: i.connected_at):
        newest[node_id(item)] = item
    return newest


@dataclass
class Connection:
    """One ADS stream's registration."""

    proxy: model.Proxy
    on_resources: Listener
    connected_at: float = field(default_factory=time.time)
    versions: dict[str, str] = field(default_factory=dict)
    resources: Resources | None = None


class MeshState:
    def __init__(self, config: model.MeshConfig, debounce: float = 0.01) -> None:
        self.config = config
        self.generation = 0
        self.world = World(config, (), 0)
        self.connections: dict[int, Connection] = {}
        self.debounce = debounce
        self.last_push_seconds = 0.0
        self.pushed_config_version = ""
        self.config_generation = 0  # the first generation computed from the current config
        self._dirty = asyncio.Event()
        self._next_id = 0

    # ---- changes ------------------------------------------------------------------------

    def set_config(self, config: model.MeshConfig) -> None:
        if config.version != self.config.version:
            self.config = config
            self._dirty.set()

    def connect(self, proxy: model.Proxy, on_resources: Listener) -> int:
        self._next_id += 1
        self.connections[self._next_id] = Connection(proxy, on_resources)
        self._dirty.set()
        return self._next_id

    def disconnect(self, handle: int) -> None:
        if self.connections.pop(handle, None) is not None:
            self._dirty.set()

    def proxies(self) -> list[model.Proxy]:
        """Connected proxies, one per node id (the newest stream wins)."""
        newest = newest_per_node(self.connections.values(), lambda c: c.proxy.node_id)
        return [conn.proxy for conn in newest.values()]

    # ---- pushing ------------------------------------------------------------------------

    def push(self) -> int:
        """Translate for every connection and notify those whose resources changed."""
        started = time.perf_counter()
        self.generation += 1
        self.world = World(self.config, tuple(self.proxies()), self.generation)
        if self.config.version != self.pushed_config_version:
            self.pushed_config_version = self.config.version
            self.config_generation = self.generation
        translator = Translator(self.world)
        notified = 0
        for conn in list(self.connections.values()):
            resources = translator.translate(conn.proxy)
            versions = {t: version_of(r) for t, r in resources.items()}
            if versions != conn.versions or conn.resources is None:
                conn.versions, conn.resources = versions, resources
                conn.on_resources(resources, self.generation)
                notified += 1
            else:
                # Nothing to send, but the proxy is now current as of this generation
                # (a gateway is untouched by most sidecar route edits).
                conn.on_resources(conn.resources, self.generation)
        self.last_push_seconds = time.perf_counter() - started
        log.debug(
            "push %d: %d of %d proxies changed in %.1f ms",
            self.generation,
            notified,
            len(self.connections),
            self.last_push_seconds * 1000,
        )
        return notified

    async def run(self) -> None:
        """Push whenever something changed, coalescing changes that arrive together."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.debounce)
            self._dirty.clear()
            try:
                self.push()
            except Exception:  # a translator bug must not stop future pushes
                log.exception("translation failed; proxies keep their previous resources")
