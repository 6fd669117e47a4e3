"""`xds-server proxy-config`: istioctl's short tables of what one Envoy holds (its own admin
/config_dump and /clusters when its admin address is reachable, else what the server
sent it), or the full resources as JSON or YAML."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

KINDS = ("clusters", "listeners", "routes", "endpoints", "secrets", "all")


def _first(sources: list[str], kind: str) -> str:
    """The first source of a kind ("DestinationRule default/reviews (file:line)")."""
    return next((s.split(" (")[0].split(" ", 1)[1] for s in sources if s.startswith(kind)), "-")


def cluster_rows(
    clusters: Iterable[dict[str, Any]],
    match: Callable[[dict], bool],
    sources: dict[str, list[str]] | None = None,
) -> list:
    """SERVICE FQDN, PORT, SUBSET, DIRECTION, TYPE, DESTINATION RULE (istioctl's)."""
    rows = [["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"]]
    for cluster in sorted(clusters, key=lambda c: c["name"]):
        parts = cluster["name"].split("|")
        if len(parts) == 4:
            direction, port, subset, fqdn = parts
        else:
            direction, port, subset, fqdn = "-", "-", "-", cluster["name"]
        facts = {
            "fqdn": fqdn,
            "port": port,
            "subset": subset,
            "direction": direction,
            "name": cluster["name"],
        }
        if not match(facts):
            continue
        kind = cluster.get("type") or cluster.get("cluster_type", {}).get("name", "-")
        rule = _first((sources or {}).get(cluster["name"], []), "DestinationRule")
        rows.append([fqdn, port or "-", subset or "-", direction, kind, rule])
    return rows


def listener_rows(listeners: Iterable[dict[str, Any]], match: Callable[[dict], bool]) -> list:
    """ADDRESSES, PORT, MATCH, DESTINATION: a row per filter chain, as istioctl's."""
    rows = [["ADDRESSES", "PORT", "MATCH", "DESTINATION"]]
    for listener in sorted(listeners, key=lambda x: x["name"]):
        address = listener.get("address", {}).get("socket_address", {})
        port = str(address.get("port_value", "-"))
        facts = {"name": listener["name"], "port": port, "address": address.get("address", "")}
        if not match(facts):
            continue
        chains = list(listener.get("filter_chains", []))
        if "default_filter_chain" in listener:
            chains.append({**listener["default_filter_chain"], "_default": True})
        for chain in chains:
            rows.append(
                [address.get("address", "-"), port, _chain_match(chain), _destination(chain)]
            )
    return rows


def _chain_match(chain: dict[str, Any]) -> str:
    if chain.get("_default"):
        return "(default)"
    match = chain.get("filter_chain_match", {})
    parts = []
    if "destination_port" in match:
        parts.append(f"Port: {match['destination_port']}")
    if match.get("server_names"):
        parts.append(f"SNI: {','.join(match['server_names'])}")
    if match.get("transport_protocol"):
        parts.append(f"Trans: {match['transport_protocol']}")
    if match.get("application_protocols"):
        parts.append(f"App: {','.join(match['application_protocols'])}")
    return "; ".join(parts) or "ALL"


def _destination(chain: dict[str, Any]) -> str:
    for network_filter in chain.get("filters", []):
        config = network_filter.get("typed_config", {})
        if "rds" in config:
            return f"Route: {config['rds'].get('route_config_name', '')}"
        if "route_config" in config:
            return f"Inline Route: {config['route_config'].get('name', '')}"
        if "cluster" in config:
            return f"Cluster: {config['cluster']}"
        if "weighted_clusters" in config:
            names = [c["name"] for c in config["weighted_clusters"].get("clusters", [])]
            return f"Clusters: {','.join(names)}"
    return "-"


def route_rows(
    routes: Iterable[dict[str, Any]],
    match: Callable[[dict], bool],
    sources: dict[str, list[str]] | None = None,
) -> list:
    """NAME, VHOST NAME, DOMAINS, MATCH, VIRTUAL SERVICE: a row per route."""
    rows = [["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]]
    for config in sorted(routes, key=lambda r: r["name"]):
        if not match({"name": config["name"]}):
            continue
        for vhost in config.get("virtual_hosts", []):
            domains = vhost.get("domains", [])
            shown = domains[0] if len(domains) == 1 else f"{domains[0]} + {len(domains) - 1} more"
            source = _first((sources or {}).get(vhost["name"], []), "VirtualService")
            for route in vhost.get("routes", []):
                rows.append([config["name"], vhost["name"], shown, _route_match(route), source])
    return rows


def _route_match(route: dict[str, Any]) -> str:
    match = route.get("match", {})
    path = "-"
    for key in ("prefix", "path", "path_separated_prefix"):
        if key in match:
            path = f"{match[key]}*" if key != "path" else match[key]
    if "safe_regex" in match:
        path = f"~{match['safe_regex'].get('regex', '')}"
    headers = [h["name"] for h in match.get("headers", []) if not h["name"].startswith(":")]
    return f"{path} [{','.join(headers)}]" if headers else path


def endpoint_rows(statuses: list[dict[str, Any]], match: Callable[[dict], bool]) -> list:
    """ENDPOINT, STATUS, OUTLIER CHECK, CLUSTER: from Envoy's /clusters?format=json."""
    rows = [["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]]
    for cluster in sorted(statuses, key=lambda c: c.get("name", "")):
        if not match({"name": cluster.get("name", "")}):
            continue
        for host in cluster.get("host_statuses", []):
            socket = host.get("address", {}).get("socket_address", {})
            health = host.get("health_status", {})
            failed = health.get("failed_outlier_check", False)
            status = health.get("eds_health_status", "HEALTHY")
            if failed:
                status = "UNHEALTHY"
            rows.append(
                [
                    f"{socket.get('address', '-')}:{socket.get('port_value', '-')}",
                    status,
                    "FAILED" if failed else "OK",
                    cluster.get("name", "-"),
                ]
            )
    return rows


def endpoint_rows_from_assignments(assignments: dict[str, Any], match) -> list:
    """The same table from what the server sent (no health: every endpoint HEALTHY)."""
    statuses = []
    for name, assignment in assignments.items():
        hosts = []
        for locality in assignment.get("endpoints", []):
            for lb in locality.get("lb_endpoints", []):
                hosts.append({"address": lb.get("endpoint", {}).get("address", {})})
        statuses.append({"name": name, "host_statuses": hosts})
    return endpoint_rows(statuses, match)


def matcher(fqdn: str = "", port: str = "", subset: str = "", direction: str = "", name: str = ""):
    """istioctl's filters: each given one must hold."""

    def match(facts: dict[str, str]) -> bool:
        wanted = {"fqdn": fqdn, "port": port, "subset": subset, "direction": direction}
        wanted["name"] = name
        return all(not value or facts.get(key, value) == value for key, value in wanted.items())

    return match


def secret_rows(dump: dict[str, Any], match: Callable[[dict], bool]) -> list:
    """RESOURCE NAME, TYPE, STATUS, VALID CERT, SERIAL NUMBER, NOT AFTER, NOT BEFORE: the
    certificates an Envoy holds (its config_dump never has private keys)."""
    import base64
    import datetime

    from cryptography import x509

    rows = [
        [
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ]
    ]
    now = datetime.datetime.now(datetime.UTC)
    for config in dump.get("configs", []):
        if not config.get("@type", "").endswith("SecretsConfigDump"):
            continue
        for entry in config.get("dynamic_active_secrets", []):
            secret = entry.get("secret", {})
            if not match({"name": entry.get("name", "")}):
                continue
            for kind, key, label in (
                ("tls_certificate", "certificate_chain", "Cert Chain"),
                ("validation_context", "trusted_ca", "CA"),
            ):
                source = secret.get(kind, {}).get(key, {})
                data = source.get("inline_bytes") or source.get("inline_string")
                if not data:
                    continue
                pem = base64.b64decode(data) if "inline_bytes" in source else data.encode()
                cert = x509.load_pem_x509_certificates(pem)[0]
                valid = cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
                rows.append(
                    [
                        entry.get("name", "-"),
                        label,
                        "ACTIVE",
                        str(valid).lower(),
                        format(cert.serial_number, "x"),
                        cert.not_valid_after_utc.isoformat(),
                        cert.not_valid_before_utc.isoformat(),
                    ]
                )
    return rows
