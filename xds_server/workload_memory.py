"""Connected workloads remembered across restarts of the server.

Sidecars register themselves by connecting, so a server that just started knows no
endpoints: the first sidecar to reconnect would be pushed endpoints without the others,
and Envoy would answer 503 until they all reconnect. The server therefore saves the
connected workloads to its state directory, and after a start counts the saved ones as
endpoints for a grace window, unless they reconnect first (then their new registration
counts) or the window ends (then they are gone, as after any disconnect).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from translators import model
from xds_server.node import NodeError, check_proxy
from xds_server.text import safe_text

log = logging.getLogger(__name__)

FILE_NAME = "workloads.json"
FORMAT = 1


def to_json(proxies: Iterable[model.Proxy]) -> str:
    entries = []
    for proxy in sorted(proxies, key=lambda p: p.node_id):
        entry = asdict(proxy)
        entry["labels"] = dict(proxy.labels)
        entry["ports"] = [[p.app_port, p.inbound_port] for p in proxy.ports]
        entries.append(entry)
    return json.dumps({"format": FORMAT, "workloads": entries}, indent=1, sort_keys=True)


_STRINGS = ("node_id", "namespace", "service_account", "ip", "role", "bind_address")
_STRINGS += ("outbound_address",)


def _proxy(entry: object) -> model.Proxy:
    """One saved proxy, checked as strictly as a connecting node (the file may have been
    edited, truncated or written by another version)."""
    if not isinstance(entry, dict):
        raise ValueError("an entry is not a mapping")
    for key in _STRINGS:
        if not isinstance(entry.get(key), str):
            raise ValueError(f"{key} is not a string")
    labels, ports, outbound = entry.get("labels"), entry.get("ports"), entry.get("outbound_port")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError("labels are not a map of strings")
    if not isinstance(ports, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(type(n) is int for n in p) for p in ports
    ):
        raise ValueError("ports are not [app, inbound] pairs")
    if type(outbound) is not int:
        raise ValueError("outbound_port is not a number")
    proxy = model.Proxy(
        **{key: entry[key] for key in _STRINGS},
        labels=dict(labels),
        outbound_port=outbound,
        ports=tuple(model.WorkloadPort(a, i) for a, i in ports),
    )
    check_proxy(proxy)
    return proxy


def from_json(text: str) -> list[model.Proxy]:
    """The saved proxies; ValueError if the file is not ours or an entry is invalid."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a workloads file of this version")
    entries = data.get("workloads")
    if not isinstance(entries, list):
        raise ValueError("workloads is not a list")
    proxies = []
    for entry in entries:
        try:
            proxies.append(_proxy(entry))
        except (TypeError, ValueError, NodeError) as exc:
            node = entry.get("node_id") if isinstance(entry, dict) else None
            raise ValueError(f"entry {str(node)[:100]!r}: {exc}") from None
    return proxies


class WorkloadMemory:
    """The state directory's record of connected workloads (None: remember nothing)."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / FILE_NAME if state_dir is not None else None
        self._saved = ""
        self._warned = False

    def load(self) -> list[model.Proxy]:
        if self.path is None or not self.path.is_file():
            return []
        try:
            proxies = from_json(self.path.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("ignoring %s: %s", self.path, safe_text(str(exc)))
            return []
        return proxies

    def save(self, proxies: Iterable[model.Proxy]) -> None:
        """Write atomically (a crash leaves the old file or the new one), only on change."""
        if self.path is None:
            return
        text = to_json(proxies)
        if text == self._saved:
            return
        temporary = self.path.with_name(f".{FILE_NAME}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(text)
            os.replace(temporary, self.path)
        except OSError as exc:
            if not self._warned:
                log.warning(
                    "cannot save connected workloads to %s (%s): after a restart, "
                    "endpoints return only as their sidecars reconnect",
                    self.path,
                    exc,
                )
                self._warned = True
            return
        self._saved = text
