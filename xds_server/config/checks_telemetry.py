"""Checks on telemetry settings: Telemetry resources, the mesh config's telemetry
providers, and defaultConfig's tracing and proxyStatsMatcher.

Expressions (tag overrides, access log filters) are CEL that Envoy evaluates: they are
parsed here with cel-python, and their attributes checked against those Envoy has, so
that a typo or an Istio-proxy-only attribute (`node`, `upstream_peer`) is an error at
its line instead of a configuration Envoy refuses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

from google.protobuf import json_format

from protos import mesh_config_pb2, telemetry_pb2
from xds_server.config.checks_common import Finding, regex_error
from xds_server.config.schema import SchemaError, to_message
from xds_server.config.yaml_lines import Path

MESH_ROOT: Path = ("data", "mesh")
# The attributes of Envoy's CEL environment (envoy/docs: "Attributes").
ENVOY_ATTRIBUTES = frozenset(
    {
        "request",
        "response",
        "connection",
        "upstream",
        "source",
        "destination",
        "metadata",
        "filter_state",
        "xds",
    }
)
_CEL_WORDS = frozenset({"true", "false", "null", "in", "has", "size", "int", "uint", "double"})
_CEL_WORDS |= frozenset({"string", "bytes", "bool", "duration", "timestamp", "matches", "dyn"})
_STRINGS = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")
_ROOT = re.compile(r"(?<![.\w])([A-Za-z_]\w*)(?!\s*\()")
# ProxyConfig keys this control plane applies; Istio's others are accepted, not applied.
APPLIED_PROXY_CONFIG = {"tracing": "tracing", "proxyStatsMatcher": "proxy_stats_matcher"}
_PROVIDER_KINDS = {
    "envoy_ext_authz_http": "envoyExtAuthzHttp",
    "envoy_ext_authz_grpc": "envoyExtAuthzGrpc",
    "zipkin": "zipkin",
    "opentelemetry": "opentelemetry",
    "envoy_file_access_log": "envoyFileAccessLog",
    "prometheus": "prometheus",
}


@lru_cache(maxsize=1024)
def expression_error(expression: str) -> str | None:
    """Why Envoy could not evaluate `expression` (CEL), or None."""
    import celpy

    if not expression.strip():
        return "an empty expression"
    try:
        celpy.Environment().compile(expression)
    except Exception as exc:  # celpy raises its own parse errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"not a CEL expression Envoy can evaluate: {first}"
    for name in _ROOT.findall(_STRINGS.sub('""', expression)):
        if name not in ENVOY_ATTRIBUTES and name not in _CEL_WORDS:
            return (
                f"{name!r} is not an attribute Envoy has (its attributes: "
                f"{', '.join(sorted(ENVOY_ATTRIBUTES))}); Istio-proxy attributes such as "
                "node or upstream_peer need Istio's own proxy"
            )
    return None


def check_telemetry(spec: telemetry_pb2.Telemetry) -> Iterator[Finding]:
    for i, metrics in enumerate(spec.metrics):
        for j, override in enumerate(metrics.overrides):
            where = ("spec", "metrics", i, "overrides", j)
            for label, tag in override.tag_overrides.items():
                at = (*where, "tagOverrides", label)
                if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label):
                    yield at, "a Prometheus label name: letters, digits and '_'"
                if tag.operation == tag.UPSERT:
                    problem = expression_error(tag.value)
                    if problem:
                        yield (*at, "value"), problem
                elif tag.value:
                    yield (*at, "value"), "REMOVE takes no value"
            match = override.match
            if match.WhichOneof("metric_match") == "custom_metric":
                from translators.istio_metrics import ISTIO_NAMES

                if match.custom_metric not in ISTIO_NAMES:
                    yield (
                        (*where, "match", "customMetric"),
                        f"not one of Istio's metrics ({', '.join(sorted(ISTIO_NAMES))})",
                    )
    for i, logging in enumerate(spec.access_logging):
        if logging.HasField("filter"):
            problem = expression_error(logging.filter.expression)
            if problem:
                yield ("spec", "accessLogging", i, "filter", "expression"), problem
    for i, tracing in enumerate(spec.tracing):
        if tracing.HasField("random_sampling_percentage"):
            value = tracing.random_sampling_percentage.value
            if not 0 <= value <= 100:
                yield ("spec", "tracing", i, "randomSamplingPercentage"), "a percent, 0 to 100"
        if len(tracing.providers) > 1:
            yield ("spec", "tracing", i, "providers"), "one tracing provider per workload"


def check_mesh_telemetry(mesh: mesh_config_pb2.MeshConfig) -> Iterator[Finding]:
    """The telemetry providers and defaultConfig of the mesh config."""
    for i, provider in enumerate(mesh.extension_providers):
        where = (*MESH_ROOT, "extensionProviders", i)
        kind = provider.WhichOneof("provider")
        key = _PROVIDER_KINDS.get(kind or "", "")
        if kind in ("zipkin", "opentelemetry"):
            settings = getattr(provider, kind)
            if not settings.service:
                yield (*where, key, "service"), "required: the collector's host"
            if not 0 < settings.port < 65536:
                yield (*where, key, "port"), "required: a port 1-65535"
        elif kind == "envoy_file_access_log":
            settings = provider.envoy_file_access_log
            if not settings.path:
                yield (*where, key, "path"), "required: the file (/dev/stdout: the proxy's log)"
    if len(mesh.default_providers.tracing) > 1:
        yield (*MESH_ROOT, "defaultProviders", "tracing", 1), "one tracing provider"
    if mesh.HasField("default_config"):
        yield from _default_config(mesh)


def _default_config(mesh: mesh_config_pb2.MeshConfig) -> Iterator[Finding]:
    root = (*MESH_ROOT, "defaultConfig")
    values = json_format.MessageToDict(mesh.default_config)
    for key, value in values.items():
        if key not in APPLIED_PROXY_CONFIG:
            continue  # default_config_warnings
        message = (
            mesh_config_pb2.ProxyTracing()
            if key == "tracing"
            else mesh_config_pb2.ProxyStatsMatcher()
        )
        try:
            parsed = to_message(type(message), value)
        except SchemaError as exc:
            yield (*root, key, *exc.path), str(exc)
            continue
        if key == "tracing":
            if not 0 <= parsed.sampling <= 100:
                yield (*root, key, "sampling"), "a percent, 0 to 100"
            address = parsed.zipkin.address
            if address:
                host, sep, port = address.rpartition(":")
                if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                    yield (*root, key, "zipkin", "address"), "HOST:PORT, e.g. zipkin:9411"
        else:
            for j, regex in enumerate(parsed.inclusion_regexps):
                problem = regex_error(regex)
                if problem:
                    yield (*root, key, "inclusionRegexps", j), problem


def default_config_warnings(mesh: mesh_config_pb2.MeshConfig) -> Iterator[Finding]:
    """ProxyConfig keys that are Istio's but not applied here."""
    for key in json_format.MessageToDict(mesh.default_config):
        if key not in APPLIED_PROXY_CONFIG:
            yield (
                (*MESH_ROOT, "defaultConfig", key),
                "accepted but not applied (applied: tracing, proxyStatsMatcher)",
            )
