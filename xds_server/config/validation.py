"""Semantic checks on one typed resource, after its shape was accepted.

Each check returns findings as (field path, message); the loader attaches file, line and
resource. Cross-resource references are resolved at translation time, as Istio does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import re2
from google.protobuf.message import Message

from protos import (
    destination_rule_pb2,
    mesh_config_pb2,
    service_entry_pb2,
    service_pb2,
    virtual_service_pb2,
    workload_entry_pb2,
)
from translators import model
from xds_server.config.yaml_lines import Path

Finding = tuple[Path, str]

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def regex_error(pattern: str) -> str | None:
    """RE2's complaint about `pattern` (Envoy compiles safe_regex with RE2), or None."""
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        return f"invalid RE2 regex {pattern!r}: {detail}"
    return None


def _port_ok(port: int) -> bool:
    return 0 < port <= 65535


def _string_match(match: virtual_service_pb2.StringMatch, path: Path) -> Iterator[Finding]:
    if match.WhichOneof("match_type") == "regex" and match.regex != "*":
        error = regex_error(match.regex)
        if error:
            yield (*path, "regex"), error


def _virtual_service(vs: virtual_service_pb2.VirtualService) -> Iterator[Finding]:
    if not vs.hosts:
        yield ("spec", "hosts"), "required: at least one host"
    for i, host in enumerate(vs.hosts):
        if not host.strip():
            yield ("spec", "hosts", i), "host must not be empty"
    for i, rule in enumerate(vs.http):
        base: Path = ("spec", "http", i)
        for j, match in enumerate(rule.match):
            mpath = (*base, "match", j)
            for name in ("uri", "scheme", "method", "authority"):
                if match.HasField(name):
                    yield from _string_match(getattr(match, name), (*mpath, name))
            groups = (
                ("headers", match.headers),
                ("withoutHeaders", match.without_headers),
                ("queryParams", match.query_params),
            )
            for group, entries in groups:
                for key, value in entries.items():
                    if group != "queryParams" and key != key.lower():
                        yield (*mpath, group, key), f'header name "{key}" must be lower case'
                    yield from _string_match(value, (*mpath, group, key))
            if match.port and not _port_ok(match.port):
                yield (*mpath, "port"), f"port {match.port} out of range 1-65535"
        if not rule.route:
            yield (*base, "route"), "required: at least one destination"
        for j, dest in enumerate(rule.route):
            dpath = (*base, "route", j)
            if not dest.destination.host:
                yield (*dpath, "destination", "host"), "required: destination host"
            if dest.weight < 0 or dest.weight > 100:
                yield (*dpath, "weight"), f"weight {dest.weight} out of range 0-100"
            port = dest.destination.port.number
            if dest.destination.HasField("port") and not _port_ok(port):
                yield (*dpath, "destination", "port", "number"), f"port {port} out of range"
        if len(rule.route) > 1 and sum(d.weight for d in rule.route) <= 0:
            yield (*base, "route"), "weights of several destinations must not all be 0"


def _destination_rule(dr: destination_rule_pb2.DestinationRule) -> Iterator[Finding]:
    if not dr.host:
        yield ("spec", "host"), "required: host"
    seen: set[str] = set()
    policies = [(("spec", "trafficPolicy"), dr.traffic_policy)]
    for i, subset in enumerate(dr.subsets):
        if not subset.name:
            yield ("spec", "subsets", i, "name"), "required: subset name"
        elif subset.name in seen:
            yield ("spec", "subsets", i, "name"), f'duplicate subset name "{subset.name}"'
        seen.add(subset.name)
        policies.append((("spec", "subsets", i, "trafficPolicy"), subset.traffic_policy))
    passthrough = destination_rule_pb2.LoadBalancerSettings.PASSTHROUGH
    for path, policy in policies:
        if policy.load_balancer.simple == passthrough:
            yield (*path, "loadBalancer", "simple"), "PASSTHROUGH is not supported yet"


def _service_entry(se: service_entry_pb2.ServiceEntry) -> Iterator[Finding]:
    if not se.hosts:
        yield ("spec", "hosts"), "required: at least one host"
    if not se.ports:
        yield ("spec", "ports"), "required: at least one port"
    for i, port in enumerate(se.ports):
        if not _port_ok(port.number):
            yield ("spec", "ports", i, "number"), f"port {port.number} out of range 1-65535"
    resolution = service_entry_pb2.ServiceEntry.Resolution
    if se.resolution == resolution.NONE:
        yield ("spec", "resolution"), "resolution NONE is not supported yet (use STATIC or DNS)"
    if se.resolution in (resolution.DNS, resolution.DNS_ROUND_ROBIN):
        for i, host in enumerate(se.hosts):
            if "*" in host and not se.endpoints:
                yield ("spec", "hosts", i), "a wildcard host cannot be resolved by DNS"
    for i, endpoint in enumerate(se.endpoints):
        if not endpoint.address:
            yield ("spec", "endpoints", i, "address"), "required: endpoint address"


def _workload_entry(we: workload_entry_pb2.WorkloadEntry) -> Iterator[Finding]:
    if not we.address:
        yield ("spec", "address"), "required: address"


def _service(svc: service_pb2.ServiceSpec) -> Iterator[Finding]:
    if not svc.ports:
        yield ("spec", "ports"), "required: at least one port"
    seen: set[int] = set()
    for i, port in enumerate(svc.ports):
        if not _port_ok(port.port):
            yield ("spec", "ports", i, "port"), f"port {port.port} out of range 1-65535"
        if port.port in seen:
            yield ("spec", "ports", i, "port"), f"duplicate port {port.port}"
        seen.add(port.port)


def _mesh(_: mesh_config_pb2.MeshConfig) -> Iterator[Finding]:
    return iter(())


CHECKS: dict[str, Callable[[Message], Iterator[Finding]]] = {
    model.VIRTUAL_SERVICE: _virtual_service,
    model.DESTINATION_RULE: _destination_rule,
    model.SERVICE_ENTRY: _service_entry,
    model.WORKLOAD_ENTRY: _workload_entry,
    model.SERVICE: _service,
    model.MESH_CONFIG: _mesh,
}


def warnings(kind: str, spec: Message) -> Iterator[Finding]:
    """Valid input that this control plane accepts but does not act on yet."""
    if kind == model.MESH_CONFIG and spec.HasField("default_config"):
        yield ("data", "mesh", "defaultConfig"), "accepted but not applied yet"


def check(kind: str, spec: Message) -> list[Finding]:
    return list(CHECKS[kind](spec))
