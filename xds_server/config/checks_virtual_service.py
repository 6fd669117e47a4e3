"""Semantic checks of a VirtualService (Istio's validation, where it matters to Envoy)."""

from __future__ import annotations

from collections.abc import Iterator

from protos import virtual_service_pb2 as vs_pb2
from translators.route_policies import GRPC_CODES, REDIRECT_CODES, split_retry_on
from xds_server.config.checks_common import (
    Finding,
    optional_duration,
    percentage,
    port_ok,
    regex_error,
    string_match,
)
from xds_server.config.yaml_lines import Path

# Envoy's retry_on conditions (HTTP and gRPC), which Istio also accepts.
RETRY_CONDITIONS = {
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
}
MAX_DIRECT_BODY = 1 << 20


def _destination(dest: vs_pb2.Destination, path: Path) -> Iterator[Finding]:
    if not dest.host:
        yield (*path, "host"), "required: destination host"
    if dest.HasField("port") and not port_ok(dest.port.number):
        yield (*path, "port", "number"), f"port {dest.port.number} out of range 1-65535"


def _weights(route, path: Path) -> Iterator[Finding]:
    for j, dest in enumerate(route):
        dpath = (*path, j)
        yield from _destination(dest.destination, (*dpath, "destination"))
        if dest.weight < 0 or dest.weight > 100:
            yield (*dpath, "weight"), f"weight {dest.weight} out of range 0-100"
    if len(route) > 1 and sum(d.weight for d in route) <= 0:
        yield path, "weights of several destinations must not all be 0"


def _match(match: vs_pb2.HTTPMatchRequest, path: Path) -> Iterator[Finding]:
    for name in ("uri", "scheme", "method", "authority"):
        if match.HasField(name):
            yield from string_match(getattr(match, name), (*path, name))
    groups = (
        ("headers", match.headers),
        ("withoutHeaders", match.without_headers),
        ("queryParams", match.query_params),
    )
    for group, entries in groups:
        for key, value in entries.items():
            if group != "queryParams" and key != key.lower():
                yield (*path, group, key), f'header name "{key}" must be lower case'
            yield from string_match(value, (*path, group, key))
    if match.port and not port_ok(match.port):
        yield (*path, "port"), f"port {match.port} out of range 1-65535"


def _retries(retries: vs_pb2.HTTPRetry, path: Path) -> Iterator[Finding]:
    if retries.attempts < 0:
        yield (*path, "attempts"), "attempts must not be negative"
    yield from optional_duration(retries, "per_try_timeout", (*path, "perTryTimeout"))
    conditions, _ = split_retry_on(retries.retry_on)
    for condition in conditions:
        if condition not in RETRY_CONDITIONS:
            known = ", ".join(sorted(RETRY_CONDITIONS))
            yield (*path, "retryOn"), f'unknown retry condition "{condition}" (known: {known})'


def _fault(fault: vs_pb2.HTTPFaultInjection, path: Path) -> Iterator[Finding]:
    if not (fault.HasField("delay") or fault.HasField("abort")):
        yield path, "a fault needs a delay or an abort"
    if fault.HasField("delay"):
        delay = fault.delay
        if not delay.HasField("fixed_delay"):
            yield (*path, "delay", "fixedDelay"), "required: fixedDelay"
        yield from optional_duration(delay, "fixed_delay", (*path, "delay", "fixedDelay"))
        yield from percentage(delay.percentage.value, (*path, "delay", "percentage", "value"))
    if fault.HasField("abort"):
        abort = fault.abort
        kind = abort.WhichOneof("error_type")
        if kind is None:
            yield (*path, "abort"), "required: httpStatus or grpcStatus"
        elif kind == "http_status" and not 200 <= abort.http_status <= 599:
            yield (*path, "abort", "httpStatus"), f"status {abort.http_status} out of 200-599"
        elif kind == "grpc_status" and abort.grpc_status not in GRPC_CODES:
            yield (*path, "abort", "grpcStatus"), f'unknown gRPC status "{abort.grpc_status}"'
        yield from percentage(abort.percentage.value, (*path, "abort", "percentage", "value"))


def _actions(rule: vs_pb2.HTTPRoute, path: Path) -> Iterator[Finding]:
    if rule.HasField("delegate"):
        yield (*path, "delegate"), "delegate VirtualServices are not supported yet"
    if rule.HasField("redirect") and rule.HasField("direct_response"):
        yield (*path, "redirect"), "redirect and directResponse cannot both be set"
    terminal = rule.HasField("redirect") or rule.HasField("direct_response")
    if terminal and rule.route:
        yield (*path, "route"), "route cannot be combined with redirect or directResponse"
    if not terminal and not rule.HasField("delegate") and not rule.route:
        yield (*path, "route"), "required: at least one destination (or redirect/directResponse)"
    if rule.HasField("redirect"):
        redirect = rule.redirect
        if redirect.redirect_code not in REDIRECT_CODES:
            yield (
                (*path, "redirect", "redirectCode"),
                (f"redirect code {redirect.redirect_code} not one of 301, 302, 303, 307, 308"),
            )
        if redirect.WhichOneof("redirect_port") == "port" and not port_ok(redirect.port):
            yield (*path, "redirect", "port"), f"port {redirect.port} out of range 1-65535"
    if rule.HasField("direct_response"):
        response = rule.direct_response
        if not 200 <= response.status <= 599:
            yield (*path, "directResponse", "status"), f"status {response.status} out of 200-599"
        body = response.body
        size = len(body.string.encode()) if body.HasField("string") else len(body.bytes)
        if size > MAX_DIRECT_BODY:
            yield (*path, "directResponse", "body"), "body larger than 1 MiB"
    if rule.HasField("rewrite") and rule.rewrite.HasField("uri_regex_rewrite"):
        if rule.rewrite.uri:
            yield (*path, "rewrite", "uri"), "uri and uriRegexRewrite cannot both be set"
        error = regex_error(rule.rewrite.uri_regex_rewrite.match)
        if error:
            yield (*path, "rewrite", "uriRegexRewrite", "match"), error


def _http_rule(rule: vs_pb2.HTTPRoute, path: Path) -> Iterator[Finding]:
    for j, match in enumerate(rule.match):
        yield from _match(match, (*path, "match", j))
    yield from _actions(rule, path)
    yield from _weights(rule.route, (*path, "route"))
    yield from optional_duration(rule, "timeout", (*path, "timeout"), 0)  # 0s: disabled
    if rule.HasField("retries"):
        yield from _retries(rule.retries, (*path, "retries"))
    if rule.HasField("fault"):
        yield from _fault(rule.fault, (*path, "fault"))
    if rule.HasField("mirror"):
        yield from _destination(rule.mirror, (*path, "mirror"))
    if rule.HasField("mirror_percentage"):
        value = rule.mirror_percentage.value
        yield from percentage(value, (*path, "mirrorPercentage", "value"))
    for j, mirror in enumerate(rule.mirrors):
        yield from _destination(mirror.destination, (*path, "mirrors", j, "destination"))
        yield from percentage(mirror.percentage.value, (*path, "mirrors", j, "percentage"))
    if rule.HasField("cors_policy"):
        for j, origin in enumerate(rule.cors_policy.allow_origins):
            yield from string_match(origin, (*path, "corsPolicy", "allowOrigins", j))
        cors = rule.cors_policy
        yield from optional_duration(cors, "max_age", (*path, "corsPolicy", "maxAge"), 0)


def check_virtual_service(vs: vs_pb2.VirtualService) -> Iterator[Finding]:
    if not vs.hosts:
        yield ("spec", "hosts"), "required: at least one host"
    for i, host in enumerate(vs.hosts):
        if not host.strip():
            yield ("spec", "hosts", i), "host must not be empty"
    if not vs.http and not vs.tcp:
        yield ("spec", "http"), "required: http or tcp routes"
    for i, rule in enumerate(vs.http):
        yield from _http_rule(rule, ("spec", "http", i))
    for i, rule in enumerate(vs.tcp):
        path: Path = ("spec", "tcp", i)
        if not rule.route:
            yield (*path, "route"), "required: at least one destination"
        yield from _weights(rule.route, (*path, "route"))
        for j, match in enumerate(rule.match):
            if match.destination_subnets:
                yield (*path, "match", j, "destinationSubnets"), "not supported yet"
