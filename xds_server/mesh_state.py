"""The live state: current config, connected proxies, and each proxy's resources.

Any change (new config, a proxy connecting or leaving) marks the state dirty; one push
task coalesces bursts (a quiet window, a maximum delay) and pushes what the change calls
for. A new configuration, or a workload joining or leaving (it is an endpoint), makes a
new World: every proxy is translated again, sharing per-namespace work, and notified if
its resources changed. A proxy that connects without changing the World (a client with
no app port, a sidecar reconnecting as it was) is translated alone, with the views
already built. Translation runs in a worker thread, so the event loop keeps serving
streams; results are handed out together, so every proxy moves to one generation.

Nothing is pushed before the first configuration is loaded (`ready`). Workloads
remembered from before a restart count as endpoints until they reconnect or the grace
window ends (workload_memory.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from translators import model
from translators.cache import CrossPushCache
from translators.resources import SECRET, Resources, ResourceSet, version_of
from translators.services import can_be_endpoint
from translators.snapshot import Translator, World
from xds_server.newest import newest_per_node
from xds_server.text import safe_text
from xds_server.workload_memory import WorkloadMemory

log = logging.getLogger(__name__)
GENERATIONS_KEPT = 4096  # generation -> config version, for tracing a NACK to its files
DELIVERY_SLICE = 64  # streams handed new resources per turn of the event loop

Listener = Callable[[Resources, int], None]


@dataclass
class Connection:
    """One ADS stream's registration."""

    proxy: model.Proxy
    on_resources: Listener
    connected_at: float = field(default_factory=time.time)
    versions: dict[str, str] = field(default_factory=dict)
    resources: Resources | None = None
    secrets: ResourceSet | None = None  # its identity's SDS secrets (identity.py)
    # SDS secrets from the config (a gateway's credentialNames), as last translated.
    config_secrets: ResourceSet | None = None


def _with_secrets(resources: Resources, conn: Connection) -> Resources:
    """The translated resources with the stream's own secrets added (they win a name)."""
    if conn.secrets is None:
        return resources
    if conn.config_secrets is None:
        return {**resources, SECRET: conn.secrets}
    return {
        **resources,
        SECRET: ResourceSet.overlay(conn.config_secrets, dict(conn.secrets.items())),
    }


class MeshState:
    def __init__(
        self,
        config: model.MeshConfig,
        debounce: float = 0.01,
        memory: WorkloadMemory | None = None,
        restart_grace: float = 0.0,
        ready: bool = True,
        max_delay: float = 0.1,
    ) -> None:
        self.config = config
        self.generation = 0
        self.world = World(config, (), 0)
        self.jwks: Mapping[str, str] = self.world.jwks
        self.connections: dict[int, Connection] = {}
        self.debounce = debounce
        self.last_push_seconds = 0.0
        self.pushed_config_version = ""
        self.config_generation = 0  # the first generation computed from the current config
        self.memory = memory or WorkloadMemory(None)
        self.restart_grace = restart_grace
        # Workloads connected before a restart that have not reconnected yet.
        self.remembered: dict[str, model.Proxy] = {}
        self.max_delay = max_delay
        self._translator: Translator | None = None
        self._cache = CrossPushCache()
        self._memory_dirty = False
        self._configs: OrderedDict[int, str] = OrderedDict()
        self._started: OrderedDict[int, float] = OrderedDict()  # generation -> its push began
        self.on_push: Callable[[float], None] | None = None  # each push's seconds
        self._dirty = asyncio.Event()
        self._ready = asyncio.Event()
        if ready:
            self._ready.set()
        self._next_id = 0

    # ---- changes ------------------------------------------------------------------------

    def set_config(self, config: model.MeshConfig) -> None:
        if config.version != self.config.version:
            self.config = config
            self._dirty.set()

    def set_jwks(self, jwks: Mapping[str, str]) -> None:
        """The key sets fetched for RequestAuthentication changed (xds_server.jwks)."""
        if jwks != self.jwks:
            self.jwks = jwks
            self._dirty.set()

    def start(self, config: model.MeshConfig) -> None:
        """The first configuration is loaded: pushes may begin."""
        self.config = config
        self._ready.set()
        self._dirty.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def remember(self) -> None:
        """Count the workloads saved before a restart as endpoints for the grace window."""
        if self.restart_grace <= 0:
            return
        self.remembered = {p.node_id: p for p in self.memory.load()}
        if self.remembered:
            log.info(
                "%d workloads remembered from before the restart stay endpoints for %gs "
                "unless they reconnect",
                len(self.remembered),
                self.restart_grace,
            )

    def forget_remembered(self) -> None:
        """The grace window ended: workloads that did not reconnect are gone."""
        gone = [n for n in self.remembered if n not in self._connected_ids()]
        if gone:
            log.info(
                "%d remembered workloads did not reconnect: %s",
                len(gone),
                safe_text(", ".join(sorted(gone)[:10])),
            )
            self._dirty.set()
        self.remembered = {}

    def connect(self, proxy: model.Proxy, on_resources: Listener) -> int:
        self._next_id += 1
        self.connections[self._next_id] = Connection(proxy, on_resources)
        self._dirty.set()
        return self._next_id

    def set_secrets(self, handle: int, secrets: ResourceSet) -> None:
        """The stream's SDS secrets (new, or renewed): sent at once, and with every later
        push."""
        conn = self.connections.get(handle)
        if conn is None:
            return
        conn.secrets = secrets
        if conn.resources is not None:
            conn.resources = _with_secrets(conn.resources, conn)
            conn.versions = {t: version_of(r) for t, r in conn.resources.items()}
            conn.on_resources(conn.resources, self.generation)

    def disconnect(self, handle: int) -> None:
        if self.connections.pop(handle, None) is not None:
            self._dirty.set()

    def _connected_ids(self) -> set[str]:
        return {c.proxy.node_id for c in self.connections.values()}

    def proxies(self) -> list[model.Proxy]:
        """Connected proxies, one per node id (the newest stream wins), and remembered
        ones that have not reconnected yet."""
        newest = newest_per_node(self.connections.values(), lambda c: c.proxy.node_id)
        proxies = {node_id: conn.proxy for node_id, conn in newest.items()}
        for node_id, proxy in self.remembered.items():
            proxies.setdefault(node_id, proxy)
        return list(proxies.values())

    def generation_started(self, generation: int) -> float | None:
        """When (time.monotonic) the push of a generation began, while remembered."""
        return self._started.get(generation)

    def config_version_at(self, generation: int) -> str | None:
        """The config version a generation was computed from, while remembered."""
        return self._configs.get(generation)

    # ---- pushing ------------------------------------------------------------------------

    def _workloads(self) -> tuple[model.Proxy, ...]:
        """The proxies that can be endpoints, in a stable order: the World's input."""
        endpoints = (p for p in self.proxies() if can_be_endpoint(p))
        return tuple(sorted(endpoints, key=lambda p: p.node_id))

    def _plan(self) -> tuple[World, Callable[[], Translator], list[tuple[int, Connection]], bool]:
        """What this push translates: a new World for everyone, or the new connections
        with the World in force. The translator is made by the function returned, in
        the worker thread: deriving it from the previous one (a registry update, the
        assignments of the services whose endpoints changed) is work too."""
        workloads = self._workloads()
        previous = self._translator
        if (
            previous is None
            or self.config is not self.world.config
            or workloads != self.world.proxies
            or self.jwks is not self.world.jwks
        ):
            self.generation += 1
            if self.config is self.world.config:
                self._cache.endpoint_round()
            else:
                self._cache.next_round()
            world = World(self.config, workloads, self.generation, self._cache, self.jwks)
            if self.config.version != self.pushed_config_version:
                self.pushed_config_version = self.config.version
                self.config_generation = self.generation
            self._configs[self.generation] = self.config.version
            self._started[self.generation] = time.monotonic()
            while len(self._configs) > GENERATIONS_KEPT:
                self._configs.popitem(last=False)
            while len(self._started) > GENERATIONS_KEPT:
                self._started.popitem(last=False)

            def derive() -> Translator:
                if previous is None:
                    return Translator(world)
                if previous.world.config is world.config:
                    return Translator.after_endpoint_change(previous, world)
                return Translator.after_config_change(previous, world)

            return world, derive, list(self.connections.items()), True
        joined = [(h, c) for h, c in self.connections.items() if c.resources is None]
        return self.world, lambda: previous, joined, False

    @staticmethod
    def _translate(
        derive: Callable[[], Translator], proxies: list[model.Proxy]
    ) -> tuple[Translator, list[Resources]]:
        translator = derive()
        return translator, [translator.translate(proxy) for proxy in proxies]

    async def push(self) -> int:
        """Translate what changed (in a worker thread) and notify the proxies whose
        resources changed; all at once, so that every proxy moves to one generation."""
        started = time.perf_counter()
        world, derive, targets, everyone = self._plan()
        if not targets:
            if everyone:  # nobody to translate for yet: the World still moves on
                self.world, self._translator = world, await asyncio.to_thread(derive)
            return 0
        generation = self.generation
        translator, results = await asyncio.to_thread(
            self._translate, derive, [conn.proxy for _, conn in targets]
        )
        # Only once it worked: a push that failed is planned again from the same World.
        self.world, self._translator = world, translator
        notified = 0
        for index, ((handle, conn), resources) in enumerate(zip(targets, results, strict=True)):
            if index and index % DELIVERY_SLICE == 0:
                # Let the streams just handed resources answer before the next ones: a
                # thousand woken at once would hold the loop for one long turn.
                await asyncio.sleep(0)
            if self.connections.get(handle) is not conn:
                continue  # gone while translating or while delivering
            conn.config_secrets = resources.get(SECRET)
            resources = _with_secrets(resources, conn)
            versions = {t: version_of(r) for t, r in resources.items()}
            if versions != conn.versions or conn.resources is None:
                conn.versions, conn.resources = versions, resources
                conn.on_resources(resources, generation)
                notified += 1
            else:
                # Nothing to send, but the proxy is now current as of this generation
                # (a gateway is untouched by most sidecar route edits).
                conn.on_resources(conn.resources, generation)
        self.last_push_seconds = time.perf_counter() - started
        if self.on_push is not None:
            self.on_push(self.last_push_seconds)
        self._memory_dirty = True
        log.debug(
            "push %d (%s): %d of %d proxies changed in %.1f ms",
            generation,
            "everyone" if everyone else "new streams",
            notified,
            len(targets),
            self.last_push_seconds * 1000,
        )
        return notified

    async def run(self) -> None:
        """Push whenever something changed, coalescing changes that arrive together:
        wait for a quiet window, but never longer than the maximum delay."""
        await self._ready.wait()
        if self.remembered:
            asyncio.get_running_loop().call_later(self.restart_grace, self.forget_remembered)
        saver = asyncio.create_task(self._save_workloads(), name="save workloads")
        try:
            await self._push_forever()
        finally:
            saver.cancel()

    async def _save_workloads(self, every: float = 0.5) -> None:
        """Write the workloads to the state directory at most every `every` seconds, in
        a worker thread: with thousands of proxies, a write per push would hold the loop."""
        while True:
            await asyncio.sleep(every)
            if self._memory_dirty:
                self._memory_dirty = False
                # Remembered ones too: a second restart must still know them.
                proxies = self.proxies()
                try:
                    await asyncio.to_thread(self.memory.save, proxies)
                except Exception:
                    log.exception("saving the workloads failed")

    async def _push_forever(self) -> None:
        last_push = -float("inf")
        while True:
            await self._dirty.wait()
            first = time.perf_counter()
            self._dirty.clear()
            # A change after a quiet spell goes out at once (a file edit was debounced by
            # the watcher already); changes that follow closely are coalesced.
            idle = first - last_push >= self.max_delay
            while not idle and time.perf_counter() - first < self.max_delay:
                await asyncio.sleep(self.debounce)
                if not self._dirty.is_set():
                    break  # quiet
                self._dirty.clear()
            try:
                await self.push()
            except Exception:  # a translator bug must not stop future pushes
                log.exception("translation failed; proxies keep their previous resources")
            last_push = time.perf_counter()
