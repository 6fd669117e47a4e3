"""Watch the config directory and feed changed files to the store (debounced by watchfiles)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import watchfiles

from translators import model
from xds_server.config.loader import YAML_SUFFIXES, ConfigStore

log = logging.getLogger(__name__)


def _yaml_only(_: watchfiles.Change, path: str) -> bool:
    return path.endswith(YAML_SUFFIXES)


def log_issues(
    store: ConfigStore, names: set[str] | None = None, known: list | None = None
) -> None:
    """Log the issues of the files in `names` (all when None), and the cross-resource ones
    not in `known` (an edit to one file can break a reference in another)."""
    for issue in store.all_issues():
        fresh_reference = issue in store.reference_issues and issue not in (known or [])
        if names is None or issue.file in names or fresh_reference:
            (log.error if issue.severity == "error" else log.warning)("%s", issue)


async def watch(
    store: ConfigStore,
    on_config: Callable[[model.MeshConfig], None],
    debounce_ms: int = 50,
    stop_event=None,
) -> None:
    """Reload changed files until cancelled; every new snapshot goes to `on_config`."""
    store.directory.mkdir(parents=True, exist_ok=True)
    async for changes in watchfiles.awatch(
        store.directory,
        watch_filter=_yaml_only,
        debounce=debounce_ms,
        step=10,
        stop_event=stop_event,
    ):
        paths = {Path(p) for _, p in changes}
        before, known = store.snapshot.version, list(store.reference_issues)
        snapshot = store.update(paths)
        log_issues(store, {store.display_name(p) for p in paths}, known)
        if snapshot.version != before:
            log.info(
                "config changed (%d files touched): version %s, %d resources",
                len(paths),
                snapshot.version,
                len(snapshot.resources),
            )
            on_config(snapshot)
