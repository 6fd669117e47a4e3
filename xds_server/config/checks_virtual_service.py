"""Semantic checks of a VirtualService (Istio's validation, where it matters to Envoy)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from protos import virtual_service_pb2 as vs_pb2
from translators.route_policies import GRPC_CODES, REDIRECT_CODES, split_retry_on
from xds_server.config.checks_common import (
    HEADER_TOKEN,
    Finding,
    enabled,
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
# Envoy refuses a larger inline direct response body unless the RouteConfiguration raises
# max_direct_response_body_size_bytes, which the translation does not (Istio sets 1 MiB).
MAX_DIRECT_BODY = 4096
# Envoy's proto limits (route_components.proto, base.proto HeaderValue).
MAX_HEADERS_TO_ADD = 1000
MAX_HEADER_BYTES = 16384
MAX_QUERY_NAME_BYTES = 1024
_CONTROL = re.compile(r"[\r\n\x00]")  # the control-chars check's business


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
    if match.HasField("uri"):
        # The URI regex goes to RouteMatch.safe_regex as written: "*" is no shorthand there.
        yield from string_match(
            match.uri, (*path, "uri"), empty_prefix_ok=True, star_means_any=False
        )
    for name in ("scheme", "method", "authority"):
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
            yield from _match_name(group, key, (*path, group, key))
            yield from string_match(value, (*path, group, key))
    if match.port and not port_ok(match.port):
        yield (*path, "port"), f"port {match.port} out of range 1-65535"


def _match_name(group: str, key: str, path: Path) -> Iterator[Finding]:
    """Envoy: HeaderMatcher.name and QueryParameterMatcher.name need a character;
    a query parameter name is at most 1024 bytes."""
    if not enabled("header-limits"):
        return
    if not key:
        yield path, f"{group} name must not be empty (Envoy refuses an empty name)"
    elif group == "queryParams" and len(key.encode()) > MAX_QUERY_NAME_BYTES:
        yield path, f"query parameter name longer than Envoy's {MAX_QUERY_NAME_BYTES} bytes"


def _is_header_value(key: str) -> bool:
    """Whether the translation writes this set/add key as a HeaderValue (it turns
    :authority/host into a host rewrite and drops other pseudo-headers)."""
    return not key.startswith(":") and key.lower() != "host"


def _emitted(ops: vs_pb2.Headers.HeaderOperations) -> int:
    """How many headers_to_add entries the translation makes of set and add."""
    return sum(1 for key in [*ops.set, *ops.add] if _is_header_value(key))


def _header_edits(headers: vs_pb2.Headers, path: Path) -> Iterator[Finding]:
    """Envoy's HeaderValue: a name of 1-16384 bytes, a value of at most 16384 bytes; a
    header to remove is not empty."""
    for side in ("request", "response"):
        ops = getattr(headers, side)
        for group in ("set", "add"):
            for key, value in getattr(ops, group).items():
                at = (*path, side, group, key)
                if not _is_header_value(key):
                    continue
                if not key:
                    yield at, "header name must not be empty (Envoy refuses an empty name)"
                elif len(key.encode()) > MAX_HEADER_BYTES:
                    yield at, f"header name longer than Envoy's {MAX_HEADER_BYTES} bytes"
                if len(value.encode()) > MAX_HEADER_BYTES:
                    yield at, f"header value longer than Envoy's {MAX_HEADER_BYTES} bytes"
        for i, name in enumerate(ops.remove):
            if not name:
                yield (*path, side, "remove", i), "header name must not be empty"


def _header_limits(rule: vs_pb2.HTTPRoute, path: Path) -> Iterator[Finding]:
    """Envoy allows 1000 headers_to_add per route and per weighted cluster; a single
    destination's headers are added to the route's own."""
    if not enabled("header-limits"):
        return
    if rule.HasField("headers"):
        yield from _header_edits(rule.headers, (*path, "headers"))
    for j, dest in enumerate(rule.route):
        if dest.HasField("headers"):
            yield from _header_edits(dest.headers, (*path, "route", j, "headers"))
    single = rule.route[0].headers if len(rule.route) == 1 else None
    for side in ("request", "response"):
        count = _emitted(getattr(rule.headers, side))
        if single is not None:
            count += _emitted(getattr(single, side))
        if count > MAX_HEADERS_TO_ADD:
            yield (
                (*path, "headers", side),
                f"{count} headers to set or add on one route; Envoy allows {MAX_HEADERS_TO_ADD}",
            )
        for j, dest in enumerate(rule.route if single is None else ()):
            own = _emitted(getattr(dest.headers, side))
            if own > MAX_HEADERS_TO_ADD:
                yield (
                    (*path, "route", j, "headers", side),
                    f"{own} headers to set or add; Envoy allows {MAX_HEADERS_TO_ADD}",
                )


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
        if size > MAX_DIRECT_BODY and enabled("direct-response-body"):
            yield (
                (*path, "directResponse", "body"),
                f"body of {size} bytes; Envoy's limit is {MAX_DIRECT_BODY} bytes",
            )
    if rule.HasField("rewrite") and rule.rewrite.HasField("uri_regex_rewrite"):
        if rule.rewrite.uri:
            yield (*path, "rewrite", "uri"), "uri and uriRegexRewrite cannot both be set"
        error = regex_error(rule.rewrite.uri_regex_rewrite.match)  # also refuses ""
        if error:
            yield (*path, "rewrite", "uriRegexRewrite", "match"), error


def _http_rule(rule: vs_pb2.HTTPRoute, path: Path) -> Iterator[Finding]:
    for j, match in enumerate(rule.match):
        yield from _match(match, (*path, "match", j))
    yield from _actions(rule, path)
    yield from _header_limits(rule, path)
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
            # The CORS filter compiles regex "*" as written (RE2 refuses it).
            opath = (*path, "corsPolicy", "allowOrigins", j)
            yield from string_match(origin, opath, star_means_any=False)
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


def _names(headers: vs_pb2.Headers, path: Path) -> Iterator[tuple[str, Path]]:
    for side in ("request", "response"):
        ops = getattr(headers, side)
        for group in ("set", "add"):
            for key in getattr(ops, group):
                yield key, (*path, side, group, key)
        for i, name in enumerate(ops.remove):
            yield name, (*path, side, "remove", i)


def header_token(name: str) -> bool:
    """An HTTP header name (RFC 9110 token), or a pseudo-header such as :authority."""
    return bool(HEADER_TOKEN.fullmatch(name.removeprefix(":")))


def virtual_service_warnings(vs: vs_pb2.VirtualService) -> Iterator[Finding]:
    """Header names that are not HTTP tokens: Envoy's rule for these fields is the lax
    one (it refuses only CR, LF and NUL), so it accepts them, but no valid request or
    response carries such a header."""
    if not enabled("header-name-token"):
        return
    for i, rule in enumerate(vs.http):
        path: Path = ("spec", "http", i)
        places = [(rule.headers, (*path, "headers"))] if rule.HasField("headers") else []
        places += [
            (d.headers, (*path, "route", j, "headers"))
            for j, d in enumerate(rule.route)
            if d.HasField("headers")
        ]
        names = [n for headers, at in places for n in _names(headers, at)]
        for j, match in enumerate(rule.match):
            for group, entries in (
                ("headers", match.headers),
                ("withoutHeaders", match.without_headers),
            ):
                names += [(key, (*path, "match", j, group, key)) for key in entries]
        for name, at in names:
            if name and not header_token(name) and not _CONTROL.search(name):
                yield at, f"{name!r} is not a valid HTTP header name; no request can carry it"
