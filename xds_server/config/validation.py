"""Semantic checks on one typed resource, after its shape was accepted.

Each check returns findings as (field path, message); the loader attaches file, line and
resource. Cross-resource references are resolved at translation time, as Istio does.
Besides each kind's own checks, every spec goes through the generic walks of checks_envoy
(every Duration, every string), so that no field escapes Envoy's limits. Checks that
mirror an Envoy limit can be turned off one by one for tests: see
checks_common.skipped_checks (XDS_SERVER_UNSAFE_SKIP_CHECKS).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterator

from envoy.type.v3 import http_status_pb2
from google.protobuf.message import Message

from protos import mesh_config_pb2, service_pb2
from translators import jwks, model
from translators.authorization import claim_path
from translators.services import port_protocol
from xds_server.config.checks_common import (
    CHECK_NAMES,
    HEADER_TOKEN,
    SKIP_ENV,
    Finding,
    enabled,
    optional_duration,
    port_ok,
    regex_error,
)
from xds_server.config.checks_destination_rule import (
    check_destination_rule,
    destination_rule_warnings,
)
from xds_server.config.checks_edge import (
    check_gateway,
    check_service_entry,
    check_sidecar,
    check_workload_entry,
    gateway_warnings,
    reserved_port_warnings,
    service_entry_warnings,
)
from xds_server.config.checks_envoy import check_fields
from xds_server.config.checks_envoy_filter import check_envoy_filter, envoy_filter_warnings
from xds_server.config.checks_linkerd import check_service_profile, check_traffic_split
from xds_server.config.checks_secret import check_secret
from xds_server.config.checks_telemetry import (
    check_mesh_telemetry,
    check_telemetry,
    default_config_warnings,
)
from xds_server.config.checks_virtual_service import (
    check_virtual_service,
    virtual_service_warnings,
)
from xds_server.config.yaml_lines import Path

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "SKIP_ENV",
    "Finding",
    "check",
    "regex_error",
    "root_path",
    "warnings",
]
MESH_ROOT: Path = ("data", "mesh")


def _service(svc: service_pb2.ServiceSpec) -> Iterator[Finding]:
    if not svc.ports:
        yield ("spec", "ports"), "required: at least one port"
    seen: set[int] = set()
    for i, port in enumerate(svc.ports):
        if not port_ok(port.port):
            yield ("spec", "ports", i, "port"), f"port {port.port} out of range 1-65535"
        if port.port in seen:
            yield ("spec", "ports", i, "port"), f"duplicate port {port.port}"
        seen.add(port.port)
        if port.target_port > 65535 and enabled("endpoint-port"):
            yield (
                ("spec", "ports", i, "targetPort"),
                f"port {port.target_port} out of range 1-65535",
            )


def _mesh(mesh: mesh_config_pb2.MeshConfig) -> Iterator[Finding]:
    """Istio wants connectTimeout >= 1ms; Envoy's Cluster.connect_timeout must be > 0 (a
    0s here would silently become the 10s default when merged). autoAllocateRange must
    be an IPv4 network with room for hosts."""
    if enabled("mesh-connect-timeout"):
        yield from optional_duration(mesh, "connect_timeout", (*MESH_ROOT, "connectTimeout"))
    seen: set[str] = set()
    for i, provider in enumerate(mesh.extension_providers):
        where = (*MESH_ROOT, "extensionProviders", i)
        if not provider.name:
            yield (*where, "name"), "required"
        elif provider.name in seen:
            yield (*where, "name"), f"another provider is named {provider.name!r}"
        seen.add(provider.name)
        kind = provider.WhichOneof("provider")
        if kind is None:
            yield (
                where,
                (
                    "needs a provider: envoyExtAuthzHttp, envoyExtAuthzGrpc, zipkin, "
                    "opentelemetry, envoyFileAccessLog or prometheus"
                ),
            )
            continue
        if not kind.startswith("envoy_ext_authz"):
            continue  # checks_telemetry
        settings = getattr(provider, kind)
        key = "envoyExtAuthzHttp" if kind == "envoy_ext_authz_http" else "envoyExtAuthzGrpc"
        if not settings.service:
            yield (*where, key, "service"), "required: the provider's host"
        if not 0 < settings.port < 65536:
            yield (*where, key, "port"), "required: a port 1-65535"
        if settings.status_on_error and not (
            settings.status_on_error.isdigit()
            and int(settings.status_on_error) in http_status_pb2.StatusCode.values()
            and int(settings.status_on_error) >= 200
        ):
            yield (*where, key, "statusOnError"), "an HTTP status code Envoy knows (e.g. 403)"
        yield from optional_duration(settings, "timeout", (*where, key, "timeout"))
    yield from check_mesh_telemetry(mesh)
    if mesh.auto_allocate_range:
        try:
            network = ipaddress.ip_network(mesh.auto_allocate_range, strict=True)
        except ValueError as exc:
            yield (*MESH_ROOT, "autoAllocateRange"), f"not a network: {exc}"
            return
        if network.version != 4 or network.prefixlen > 30:
            yield (*MESH_ROOT, "autoAllocateRange"), "an IPv4 network of /30 or larger"


CHECKS: dict[str, Callable[[Message], Iterator[Finding]]] = {
    model.VIRTUAL_SERVICE: check_virtual_service,
    model.DESTINATION_RULE: check_destination_rule,
    model.SERVICE_ENTRY: check_service_entry,
    model.GATEWAY: check_gateway,
    model.SIDECAR: check_sidecar,
    model.TRAFFIC_SPLIT: check_traffic_split,
    model.SERVICE_PROFILE: check_service_profile,
    model.WORKLOAD_ENTRY: check_workload_entry,
    model.SERVICE: _service,
    model.MESH_CONFIG: _mesh,
    model.PEER_AUTHENTICATION: lambda spec: _peer_authentication(spec),
    model.AUTHORIZATION_POLICY: lambda spec: _authorization_policy(spec),
    model.REQUEST_AUTHENTICATION: lambda spec: _request_authentication(spec),
    model.SECRET: check_secret,
    model.TELEMETRY: check_telemetry,
    model.ENVOY_FILTER: check_envoy_filter,
}


# `when` keys applied (authorization.py); others are refused by name.
WHEN_KEYS = (
    "source.ip",
    "source.namespace",
    "source.principal",
    "remote.ip",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
)


def _authorization_policy(spec) -> Iterator[Finding]:
    """What Istio refuses, and what is not applied here yet."""
    action = spec.Action.Name(spec.action)
    if action == "CUSTOM" and not spec.provider.name:
        yield ("spec", "provider", "name"), "CUSTOM needs the name of an extension provider"
    elif action != "CUSTOM" and spec.HasField("provider"):
        yield ("spec", "provider"), "only with action CUSTOM"
    for r, rule in enumerate(spec.rules):
        for f, origin in enumerate(getattr(rule, "from")):
            where = ("spec", "rules", r, "from", f, "source")
            for name in _MATCHED_SOURCE:
                for i, value in enumerate(getattr(origin.source, name)):
                    found = _match_value_problem(value)
                    if found:
                        yield (*where, _camel(name), i), found
            for name in ("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks"):
                for i, block in enumerate(getattr(origin.source, name)):
                    try:
                        ipaddress.ip_network(block, strict=False)
                    except ValueError:
                        yield (*where, _camel(name), i), f"{block!r} is not an address or CIDR"
        for t, to in enumerate(rule.to):
            where = ("spec", "rules", r, "to", t, "operation")
            for name in ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths"):
                for i, value in enumerate(getattr(to.operation, name)):
                    found = _match_value_problem(value)
                    if not found and "paths" in name and "{" in value:
                        found = "path templates ({*}, {**}) are not supported yet"
                    if found:
                        yield (*where, _camel(name), i), found
            for name in ("ports", "not_ports"):
                for i, port in enumerate(getattr(to.operation, name)):
                    if not port.isdigit() or not 0 < int(port) < 65536:
                        yield (*where, _camel(name), i), f"{port!r} is not a port"
        for c, condition in enumerate(rule.when):
            where = ("spec", "rules", r, "when", c, "key")
            key = condition.key
            if not (
                key in WHEN_KEYS
                or re.fullmatch(r"request\.headers\[[^\]]+\]", key)
                or claim_path(key) is not None
            ):
                known = ("request.headers[NAME]", "request.auth.claims[NAME]", *WHEN_KEYS)
                yield where, f"unknown key {key!r}: use {', '.join(known)}"
            elif not condition.values and not condition.not_values:
                yield ("spec", "rules", r, "when", c), "needs values or notValues"
            else:
                yield from _condition_values(condition, ("spec", "rules", r, "when", c))


def _request_authentication(spec) -> Iterator[Finding]:
    """What Envoy's JWT filter or the key fetcher would trip on, found at load time."""
    for r, rule in enumerate(spec.jwt_rules):
        where = ("spec", "jwtRules", r)
        if not rule.issuer:
            yield (*where, "issuer"), "required: the `iss` of the tokens this rule verifies"
        if rule.jwks and rule.jwks_uri:
            yield (*where, "jwks"), "give jwks or jwksUri, not both"
        elif rule.jwks:
            found = jwks.problem(rule.jwks)
            if found is not None:
                yield (*where, "jwks"), f"not a usable key set: {found}"
        elif rule.jwks_uri:
            url = urllib.parse.urlsplit(rule.jwks_uri)
            if url.scheme not in ("http", "https") or not url.hostname:
                yield (*where, "jwksUri"), f"{rule.jwks_uri!r} is not an http(s) URL"
        else:
            url = urllib.parse.urlsplit(rule.issuer)
            if url.scheme not in ("http", "https") or not url.hostname:
                yield (
                    (*where, "issuer"),
                    "without jwks or jwksUri the keys are found by OpenID discovery, "
                    "which wants an issuer that is an http(s) URL",
                )
        for h, header in enumerate(rule.from_headers):
            if not HEADER_TOKEN.fullmatch(header.name):
                yield (*where, "fromHeaders", h, "name"), f"{header.name!r} is not a header name"
        for c, claim in enumerate(rule.output_claim_to_headers):
            if not HEADER_TOKEN.fullmatch(claim.header):
                yield (*where, "outputClaimToHeaders", c, "header"), "not a header name"
            if not claim.claim:
                yield (*where, "outputClaimToHeaders", c, "claim"), "required"
        if rule.output_payload_to_header and not HEADER_TOKEN.fullmatch(
            rule.output_payload_to_header
        ):
            yield (*where, "outputPayloadToHeader"), "not a header name"
        if rule.HasField("timeout") and rule.timeout.ToTimedelta().total_seconds() <= 0:
            yield (*where, "timeout"), "must be positive"


def _condition_values(condition, where) -> Iterator[Finding]:
    """Addresses and ports where the key wants them (Envoy would refuse the rest)."""
    for field in ("values", "not_values"):
        for i, value in enumerate(getattr(condition, field)):
            at = (*where, _camel(field), i)
            if condition.key in ("source.ip", "remote.ip", "destination.ip"):
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError:
                    yield at, f"{value!r} is not an address or CIDR"
            elif condition.key == "destination.port" and not (
                value.isdigit() and 0 < int(value) < 65536
            ):
                yield at, f"{value!r} is not a port"


_MATCHED_SOURCE = (
    "principals",
    "not_principals",
    "request_principals",
    "not_request_principals",
    "namespaces",
    "not_namespaces",
)


def _match_value_problem(value: str) -> str | None:
    """Istio's rules for a matched string: not empty, `*` only alone, first or last."""
    if not value:
        return "empty value not allowed"
    inner = value[1:] if value.startswith("*") else value
    inner = inner[:-1] if inner.endswith("*") else inner
    if "*" in inner or (value.startswith("*") and value.endswith("*") and value != "*"):
        return f"{value!r}: `*` may only be the whole value, its prefix or its suffix"
    return None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _peer_authentication(spec) -> Iterator[Finding]:
    """Istio's rules: port-level modes need a selector (they name a workload's ports)."""
    if spec.port_level_mtls and not spec.HasField("selector"):
        yield ("spec", "portLevelMtls"), "needs a selector: port numbers are a workload's"
    for port in spec.port_level_mtls:
        if not 0 < port < 65536:
            yield ("spec", "portLevelMtls", port), f"{port} is not a port"


def root_path(kind: str) -> Path:
    """Where a kind's spec sits in its document: `spec`, or the mesh ConfigMap's data."""
    if kind == model.SECRET:
        return ()  # a Secret's fields sit beside its metadata
    return MESH_ROOT if kind == model.MESH_CONFIG else ("spec",)


def _service_warnings(svc: service_pb2.ServiceSpec) -> Iterator[Finding]:
    for i, port in enumerate(svc.ports):
        protocol = port_protocol(port.name, port.app_protocol)
        yield from reserved_port_warnings(port.port, protocol, ("spec", "ports", i, "port"))


_EXPORTED = (model.VIRTUAL_SERVICE, model.DESTINATION_RULE, model.SERVICE_ENTRY)


def warnings(kind: str, spec: Message) -> Iterator[Finding]:
    """Valid input that this control plane accepts but does not act on yet, or that will
    not work as the user probably expects."""
    if kind == model.MESH_CONFIG and spec.HasField("default_config"):
        yield from default_config_warnings(spec)
    if kind in _EXPORTED and list(spec.export_to) not in ([], ["*"]):
        yield (
            ("spec", "exportTo"),
            ("accepted but not applied yet: every namespace sees this resource"),
        )
    if kind == model.DESTINATION_RULE:
        yield from destination_rule_warnings(spec)
    elif kind == model.VIRTUAL_SERVICE:
        yield from virtual_service_warnings(spec)
    elif kind == model.SERVICE:
        yield from _service_warnings(spec)
    elif kind == model.SERVICE_ENTRY:
        yield from service_entry_warnings(spec)
    elif kind == model.GATEWAY:
        yield from gateway_warnings(spec)
    elif kind == model.ENVOY_FILTER:
        yield from envoy_filter_warnings(spec)


def check(kind: str, spec: Message) -> list[Finding]:
    """The kind's own checks, then the generic walks over every field of the spec."""
    root = root_path(kind)
    if kind == model.SECRET:  # the generic walks could quote values: not a key's
        return list(check_secret(spec))
    return [
        *CHECKS[kind](spec),
        *check_fields(spec, root),
    ]
