"""`xds-server proxy-status`: istioctl's sync table, from the server's debug API; for one
proxy, what the server sent against what its Envoy holds now (its own admin
/config_dump), as a unified diff, and Envoy's reason and the files behind a rejection."""

from __future__ import annotations

import difflib
import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

TYPES = ("CDS", "LDS", "EDS", "RDS", "SDS")


class DebugApiError(RuntimeError):
    """The server's (or an Envoy's) HTTP API could not be read."""


def get_json(url: str, token: str = "", timeout: float = 10) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise DebugApiError(f"{url}: HTTP {exc.code} {detail}") from None
    except (OSError, ValueError) as exc:
        raise DebugApiError(f"{url}: {exc}") from None


def table(syncz: dict[str, Any], server_version: str, reasons: Iterable[str] = ()) -> str:
    """istioctl proxy-status's table: a row per proxy, a column per type it was sent.
    `reasons`: Envoy's reasons for the files the server holds back; a type a proxy
    refused for one of them shows ERROR while it is held, although the proxy runs the
    last good config again."""
    reasons = {r for r in reasons if r}
    proxies = syncz.get("proxies", [])
    shown = [t for t in TYPES if any(t in p["types"] for p in proxies)] or list(TYPES[:4])
    header = ["NAME", "CLUSTER", *shown, "XDS", "VERSION"]
    rows = [header]
    for proxy in proxies:
        name = f"{proxy['proxy']}.{proxy.get('namespace') or 'default'}"
        states = [_state(proxy["types"].get(t, {}), reasons) for t in shown]
        rows.append(
            [
                name,
                proxy.get("cluster") or "-",
                *states,
                f"xds-server {server_version} ({proxy.get('api', '')})",
                proxy.get("envoy_version") or "-",
            ]
        )
    return render(rows)


def render(rows: list[list[str]]) -> str:
    """Rows as istioctl prints them: columns padded to their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def proxy_of(syncz: dict[str, Any], node_id: str) -> dict[str, Any]:
    """A connected proxy's sync state; DebugApiError naming the connected ones if not."""
    for proxy in syncz.get("proxies", []):
        if proxy["proxy"] == node_id:
            return proxy
    known = ", ".join(p["proxy"] for p in syncz.get("proxies", [])) or "none"
    raise DebugApiError(f"no proxy {node_id} (connected: {known})")


def _state(state: dict[str, Any], reasons: set[str]) -> str:
    if state.get("nacks") and state.get("nack_error") in reasons:
        return "ERROR"
    return state.get("status", "NOT SENT")


def dynamic_resources(dump: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The xDS resources of a config_dump (Envoy's or the server's), by type and name."""
    kinds = ("clusters", "listeners", "routes", "endpoints")
    out: dict[str, dict[str, Any]] = {t: {} for t in kinds}
    configs = dump.get("configs", []) if isinstance(dump, dict) else []
    for config in configs if isinstance(configs, list) else []:
        if not isinstance(config, dict):
            continue
        kind = config.get("@type", "").rpartition(".")[2]
        if kind == "ClustersConfigDump":
            for entry in config.get("dynamic_active_clusters", []):
                cluster = entry["cluster"]
                out["clusters"][cluster["name"]] = cluster
        elif kind == "ListenersConfigDump":
            for entry in config.get("dynamic_listeners", []):
                active = entry.get("active_state")
                if active is not None:
                    out["listeners"][entry["name"]] = active["listener"]
        elif kind == "RoutesConfigDump":
            for entry in config.get("dynamic_route_configs", []):
                route = entry["route_config"]
                out["routes"][route["name"]] = route
        elif kind == "EndpointsConfigDump":
            for entry in config.get("dynamic_endpoint_configs", []):
                assignment = entry.get("endpoint_config", {})
                out["endpoints"][assignment.get("cluster_name", "")] = assignment
    return out


def diff(sent: dict[str, Any], held: dict[str, Any], proxy: str) -> str:
    """A unified diff of what the server sent and what the Envoy holds (empty: in sync)."""
    left = _lines(_compared(dynamic_resources(sent)))
    right = _lines(_compared(dynamic_resources(held)))
    return "".join(
        difflib.unified_diff(left, right, f"{proxy} (sent by xds-server)", f"{proxy} (in Envoy)")
    )


def _compared(resources: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Clusters, listeners and routes: Envoy's /config_dump leaves endpoints out."""
    return {kind: resources[kind] for kind in ("clusters", "listeners", "routes")}


def _lines(resources: dict[str, dict[str, Any]]) -> list[str]:
    return json.dumps(_clean(resources), indent=1, sort_keys=True).splitlines(keepends=True)


def _clean(value: Any) -> Any:
    """Leave out what differs only in form: Envoy writes the type URL of Anys it knows
    and the server the same, but Envoy's dump adds a `last_updated`."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k != "last_updated"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def rejections(
    proxy: dict[str, Any], configz: dict[str, Any], sources: dict[str, Any] | None = None
) -> list[str]:
    """For each type the proxy refused (now, or last; the server then holds the file back
    and the proxy goes on with the last good config): Envoy's message, and the files the
    server traced the rejection to, with file:line."""
    lines = []
    for kind, state in proxy["types"].items():
        if state.get("status") != "ERROR" and not state.get("nacks"):
            continue
        now = "rejects" if state.get("status") == "ERROR" else "last rejected"
        version = state.get("nacked_version")
        lines.append(f"{kind}: {now}" + (f" version {version}" if version else ""))
        lines.append(f"  Envoy: {state.get('nack_error')}")
        lines += _named(state.get("nack_error") or "", kind, sources or {})
    if lines:
        traced = [i for i in configz.get("issues", []) if "Envoy rejected" in i.get("message", "")]
        for issue in traced:
            resource = f" {issue['resource']}:" if issue.get("resource") else ""
            lines.append(f"  {issue['file']}:{issue['line']}:{resource} {issue['message']}")
        if not traced:
            lines.append("  (no file is held back for it now)")
    return lines


def _named(message: str, kind: str, sources: dict[str, Any]) -> list[str]:
    """The resources Envoy's message names, and the YAML behind each (provenance)."""
    lines = []
    groups = {"CDS": "clusters", "EDS": "clusters", "RDS": "virtual_hosts"}
    for name, behind in sources.get(groups.get(kind, ""), {}).items():
        if name and name in message and behind:
            lines.append(f"  {name} comes from: {'; '.join(behind)}")
    if kind == "LDS" and sources.get("listeners"):
        lines.append(f"  the listeners come from: {'; '.join(sources['listeners'])}")
    return lines
