"""Checks on telemetry settings: Telemetry resources, the mesh config's telemetry
providers, and defaultConfig's tracing and proxyStatsMatcher.

Expressions (tag overrides, access log filters) are CEL that Envoy evaluates: they are
parsed here with cel-python, and their attributes checked against those Envoy has, so
that a typo or an Istio-proxy-only attribute (`node`, `upstream_peer`) is an error at
its line instead of a configuration Envoy refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import lru_cache

from google.protobuf import json_format

from protos import mesh_config_pb2, telemetry_pb2
from xds_server.config.checks_common import Finding, regex_error
from xds_server.config.checks_formats import format_error
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
_CEL_WORDS = frozenset({"true", "false", "null", "in"})
# CEL's standard functions and methods, which Envoy's CEL has (it has no string or math
# extensions: lowerAscii, split, ... are refused by Envoy).
CEL_FUNCTIONS = frozenset(
    {
        "has",
        "size",
        "matches",
        "startsWith",
        "endsWith",
        "contains",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "bool",
        "duration",
        "timestamp",
        "type",
        "dyn",
        "getFullYear",
        "getMonth",
        "getDate",
        "getDayOfMonth",
        "getDayOfWeek",
        "getDayOfYear",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
    }
)
_COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_STRINGS = re.compile(r"""[bBrR]{0,2}(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_NAME = re.compile(r"[A-Za-z_]\w*")
_MATCHES = re.compile(r"""matches\(\s*(?:[bBrR]{0,2})("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
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
def expression_error(expression: str, in_format: bool = False) -> str | None:
    """Why Envoy could not evaluate `expression` (CEL), or None. `in_format`: it goes
    into a `%CEL(...)%` command, which Envoy ends at the first ')%'."""
    import celpy

    if not expression.strip():
        return "an empty expression"
    if in_format and ")%" in expression:
        return (
            "Envoy reads %CEL(...)% up to the first ')%', which this expression holds; "
            "write it with a space between ')' and '%'"
        )
    try:
        celpy.Environment().compile(expression)
    except Exception as exc:  # celpy raises its own parse errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"not a CEL expression Envoy can evaluate: {first}"
    bare = _STRINGS.sub('""', expression)
    for dot, name, call in _names(bare):
        if call:
            if name in _COMPREHENSIONS:
                return f"{name}() is a comprehension, which Envoy's CEL does not allow"
            if name not in CEL_FUNCTIONS:
                return (
                    f"{name}() is not a function Envoy's CEL has (it has CEL's standard "
                    "functions: size, matches, startsWith, endsWith, contains, int, string...)"
                )
        elif not dot and name not in ENVOY_ATTRIBUTES and name not in _CEL_WORDS:
            return (
                f"{name!r} is not an attribute Envoy has (its attributes: "
                f"{', '.join(sorted(ENVOY_ATTRIBUTES))}); Istio-proxy attributes such as "
                "node or upstream_peer need Istio's own proxy"
            )
    for literal in _MATCHES.findall(expression):
        try:
            pattern = json.loads(literal) if literal.startswith('"') else literal[1:-1]
        except ValueError:
            continue
        problem = regex_error(pattern)
        if problem:
            return f"matches({literal}): {problem}"
    return None


def _names(text: str) -> list[tuple[bool, str, bool]]:
    """(after a dot, name, called) for each identifier of an expression without strings."""
    out = []
    for match in _NAME.finditer(text):
        start, end = match.span()
        if start and (text[start - 1].isalnum() or text[start - 1] == "_"):
            continue  # inside a number such as 1e3
        before = text[:start].rstrip()
        after = text[end:].lstrip()
        out.append((before.endswith("."), match.group(), after.startswith("(")))
    return out


def check_telemetry(spec: telemetry_pb2.Telemetry) -> Iterator[Finding]:
    for i, metrics in enumerate(spec.metrics):
        for j, override in enumerate(metrics.overrides):
            where = ("spec", "metrics", i, "overrides", j)
            for label, tag in override.tag_overrides.items():
                at = (*where, "tagOverrides", label)
                if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label):
                    yield at, "a Prometheus label name: letters, digits and '_'"
                if tag.operation == tag.UPSERT:
                    problem = expression_error(tag.value, in_format=True)
                    if problem:
                        yield (*at, "value"), problem
                elif tag.value:
                    yield (*at, "value"), "REMOVE takes no value"
            match = override.match
            if match.WhichOneof("metric_match") == "metric" and match.metric in _GRPC_MESSAGES:
                yield (
                    (*where, "match", "metric"),
                    ("not supported yet: Istio's gRPC message counts need Istio's own proxy"),
                )
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
        yield from custom_tag_problems(tracing.custom_tags, ("spec", "tracing", i, "customTags"))


_GRPC_MESSAGES = (
    telemetry_pb2.GRPC_REQUEST_MESSAGES,
    telemetry_pb2.GRPC_RESPONSE_MESSAGES,
)
_HOST = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?")


def custom_tag_problems(tags, where: Path) -> Iterator[Finding]:
    """Envoy wants a tag name, a kind, and a literal value or a variable/header name."""
    for name, tag in tags.items():
        at = (*where, name)
        kind = tag.WhichOneof("type")
        if not name:
            yield where, "a custom tag needs a name"
        elif kind is None:
            yield at, "needs literal, environment or header"
        elif kind == "literal" and not tag.literal.value:
            yield (*at, "literal", "value"), "required"
        elif kind in ("environment", "header") and not getattr(tag, kind).name:
            yield (*at, kind, "name"), "required"


def host_problem(host: str) -> str | None:
    """A collector's host: a DNS name or an IPv4 address (Envoy resolves IPv4 here)."""
    if not _HOST.fullmatch(host) or ":" in host:
        return f"{host!r} is not a host name or IPv4 address (no port, no IPv6)"
    return None


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
            elif host_problem(settings.service):
                yield (*where, key, "service"), host_problem(settings.service)
            if not 0 < settings.port < 65536:
                yield (*where, key, "port"), "required: a port 1-65535"
        elif kind == "envoy_file_access_log":
            settings = provider.envoy_file_access_log
            if not settings.path:
                yield (*where, key, "path"), "required: the file (/dev/stdout: the proxy's log)"
            log_format = settings.log_format
            if log_format.WhichOneof("log_format") == "text":
                problem = format_error(log_format.text)
                if problem:
                    yield (*where, key, "logFormat", "text"), problem
            elif log_format.WhichOneof("log_format") == "labels":
                for label, value in json_format.MessageToDict(log_format.labels).items():
                    problem = format_error(value) if isinstance(value, str) else None
                    if problem:
                        yield (*where, key, "logFormat", "labels", label), problem
    if mesh.access_log_format:
        problem = format_error(mesh.access_log_format)
        if problem:
            yield (*MESH_ROOT, "accessLogFormat"), problem
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
                elif host_problem(host):
                    yield (*root, key, "zipkin", "address"), host_problem(host)
            yield from custom_tag_problems(parsed.custom_tags, (*root, key, "customTags"))
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
