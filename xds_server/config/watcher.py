"""Watch the config directory and feed changes to the store, without ever stopping.

Reading and parsing run in a worker thread, so a large file or thousands of files at once
leave the event loop free for health checks and xDS. One lock orders every store update
(file changes, settle windows ending, rollbacks). If watching fails, the failure is
logged, the directory rescanned (changes may have been missed) and watching resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import watchfiles

from translators import model
from xds_server.config.loader import ConfigIssue
from xds_server.config.store import ConfigStore
from xds_server.text import safe_text

log = logging.getLogger(__name__)

MAX_RESTART_DELAY = 30.0


def log_issues(issues: Iterable[ConfigIssue]) -> None:
    for issue in issues:
        (log.error if issue.severity == "error" else log.warning)("%s", safe_text(str(issue)))


class ConfigWatcher:
    """Owns every update of the store; new snapshots go to `on_config`."""

    def __init__(
        self,
        store: ConfigStore,
        on_config: Callable[[model.MeshConfig], None],
        debounce_ms: int = 50,
        restart_delay: float = 1.0,
        probe_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.on_config = on_config
        self.debounce_ms = debounce_ms
        self.restart_delay = restart_delay
        self.restarts = 0
        self.last_error = ""
        self.probe_interval = probe_interval
        self._lock = asyncio.Lock()
        self._settle: asyncio.TimerHandle | None = None
        self._probe: asyncio.TimerHandle | None = None

    async def load(self) -> model.MeshConfig:
        """The first load: every file, every issue logged."""
        async with self._lock:
            snapshot = await asyncio.to_thread(self.store.load_all)
            log_issues(self.store.all_issues())
            self._schedule_settle()
        return snapshot

    async def apply(self, paths: Iterable[Path] = (), rescan: bool = False) -> None:
        """Update the store with these changed paths (or decide again, or rescan) and
        hand on a changed snapshot. Never raises: the configuration in force stays."""
        paths = list(paths)
        async with self._lock:
            await self._update(lambda: self.store.update(paths, rescan), paths)

    async def rollback(self, good_version: str, bad_version: str, message: str) -> list[str]:
        """Envoy rejected what `bad_version` produced: hold back the files changed since
        `good_version` and push what remains. Returns the files rolled back."""
        async with self._lock:
            files = self.store.rollback(good_version, bad_version, message)
            if files:
                await self._update(self.store.update, ())
        self._schedule_probe()
        return files

    def _schedule_probe(self) -> None:
        """While files rolled back together wait, retry one of them every probe interval;
        if Envoy rejects it again, that push changed only it, and it alone is held."""
        if self._probe is not None or not self.store.has_suspects():
            return
        loop = asyncio.get_running_loop()
        self._probe = loop.call_later(
            self.probe_interval, lambda: loop.create_task(self._release_suspect())
        )

    async def _release_suspect(self) -> None:
        self._probe = None
        async with self._lock:
            name = self.store.release_suspect()
            if name is not None:
                log.info("retrying %s alone (it was rolled back with other files)", name)
                await self._update(self.store.update, ())
        self._schedule_probe()

    async def _update(self, update: Callable[[], model.MeshConfig], paths: list[Path]) -> None:
        store = self.store
        before_version = store.snapshot.version
        before = set(store.all_issues())
        try:
            snapshot = await asyncio.to_thread(update)
        except Exception:
            log.exception("config update failed; the configuration in force stays")
            return
        touched = {store.display_name(p) for p in paths}
        log_issues(i for i in store.all_issues() if i not in before or i.file in touched)
        self._schedule_settle()
        if snapshot.version != before_version:
            changes = store.state.changes
            shown = " ".join(str(c) for c in changes[:5])
            more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""
            log.info(
                "config changed (%d files touched): version %s, %d resources; %s%s",
                len(paths),
                snapshot.version,
                len(snapshot.resources),
                safe_text(shown or "no resource changed (mesh settings)", 2000),
                more,
            )
            self.on_config(snapshot)

    def _schedule_settle(self) -> None:
        """Decide again when the earliest settle window ends."""
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        deadline = self.store.next_deadline()
        if deadline is None:
            return
        delay = max(0.0, deadline - self.store.clock()) + 0.01
        loop = asyncio.get_running_loop()
        self._settle = loop.call_later(delay, lambda: loop.create_task(self.apply()))

    def _interesting(self, _: watchfiles.Change, path: str) -> bool:
        # Config files; anything else that is not hidden (a directory renamed, deleted or
        # moved in takes files along, whatever its name); and Kubernetes' `..data` swap,
        # by which a mounted ConfigMap changes every file at once.
        if self.store.is_state(path):
            return False  # the server's own writes
        if self.store.is_config(path) or not self.store.is_hidden(path):
            return True
        relative = os.path.relpath(path, os.path.abspath(self.store.directory))
        return relative.startswith("..") and not relative.startswith(".." + os.sep)

    def _files_only(self, paths: set[Path]) -> bool:
        """Whether these changes are config files alone (else the directory is rescanned)."""
        return all(self.store.is_config(p) and not self.store.holds_files_under(p) for p in paths)

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        """Watch until cancelled (or `stop_event`); restart after any failure."""
        delay = self.restart_delay
        while stop_event is None or not stop_event.is_set():
            try:
                async for changes in watchfiles.awatch(
                    self.store.directory,
                    watch_filter=self._interesting,
                    debounce=self.debounce_ms,
                    step=10,
                    stop_event=stop_event,
                ):
                    paths = {Path(p) for _, p in changes}
                    await self.apply(paths, rescan=not self._files_only(paths))
                    delay = self.restart_delay
                if stop_event is not None and stop_event.is_set():
                    return
                raise RuntimeError("the file watcher stopped")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts += 1
                self.last_error = safe_text(f"{type(exc).__name__}: {exc}")
                log.error(
                    "watching %s failed (%s); rescanning and watching again in %.0fs",
                    self.store.directory,
                    self.last_error,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY)
                with contextlib.suppress(Exception):
                    await self.apply(rescan=True)

    def close(self) -> None:
        for timer in (self._settle, self._probe):
            if timer is not None:
                timer.cancel()
