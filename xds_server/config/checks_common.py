"""Helpers shared by the per-kind semantic checks, and the switch that turns checks off.

Checks that mirror a limit of Envoy carry a name (CHECK_NAMES) so that a test can turn
one off and hand Envoy the config it would refuse; see `enabled`.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator

import re2
from google.protobuf import duration_pb2

from protos import virtual_service_pb2
from xds_server.config.yaml_lines import Path

Finding = tuple[Path, str]
# RFC 9110 token: what an HTTP header name may be made of.
HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

SKIP_ENV = "XDS_SERVER_UNSAFE_SKIP_CHECKS"
# Every check that `enabled` can turn off, with the rule it enforces.
CHECK_NAMES = {
    "regex-syntax": "RE2 must compile the regex as Envoy does; an empty regex is refused",
    "re2-program-size": "RE2 program size at most Envoy's re2.max_program_size.error_level",
    "duration-range": "durations not negative and under Envoy's int64-nanosecond limit",
    "control-chars": "no CR, LF or NUL in strings (Envoy's HTTP_HEADER_NAME/VALUE rules)",
    "empty-matcher": "no empty prefix in a StringMatcher (Envoy: min_len 1)",
    "header-limits": "header names, values and counts within Envoy's proto limits",
    "direct-response-body": "inline body at most 4096 bytes (Envoy's default route limit)",
    "header-name-token": "warning: header names that are not HTTP tokens",
    "consistent-hash": "maglev table prime and <= 5000011, ring size <= 8388608, keys set",
    "endpoint-address": "STATIC endpoints are IP literals; no unix:// addresses",
    "endpoint-port": "endpoint and target ports within 1-65535",
    "dns-round-robin": "DNS_ROUND_ROBIN (LOGICAL_DNS) has at most one endpoint",
    "service-entry-hosts": "ServiceEntry hosts are not empty",
    "traffic-split-weights": "TrafficSplit weights fit Envoy's weighted clusters",
    "retry-budget": "retryRatio at most 1 (Envoy's budget_percent is at most 100%)",
    "tcp-keepalive": "keepalive seconds fit uint32; warning past Linux's socket limits",
    "mesh-connect-timeout": "mesh connectTimeout at least 1ms (Istio; Envoy needs > 0)",
    "reserved-ports": "warning: TCP service or gateway ports the proxy itself uses",
}

# Envoy's default runtime `re2.max_program_size.error_level`: it refuses bigger programs.
RE2_MAX_PROGRAM_SIZE = 100
# Envoy converts durations to int64 nanoseconds and refuses seconds >= 2**63 // 10**9
# (measured with Envoy 1.40: 9223372035.5s is accepted, 9223372036s refused).
DURATION_LIMIT_SECONDS = 9_223_372_036

# Envoy 1.40 hands RE2 the pattern's UTF-8 bytes as Latin-1 (measured: `\x{100}` is an
# invalid escape to it, `é{50}` costs 51 instructions), so validity and program size are
# computed the same way here.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.encoding = re2.Options.Encoding.LATIN1


def skipped_checks() -> frozenset[str]:
    """Check names listed in $XDS_SERVER_UNSAFE_SKIP_CHECKS (comma-separated).

    A testing seam, read on every call: tests set it to inject configs that Envoy rejects
    (to prove that Envoy does reject them). Never set it in production: a skipped check
    lets Envoy NACK the config instead of the loader reporting it with file and line."""
    return _parse_skipped(os.environ.get(SKIP_ENV, ""))


@functools.lru_cache(maxsize=8)
def _parse_skipped(raw: str) -> frozenset[str]:
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


def enabled(name: str) -> bool:
    """Whether check `name` (one of CHECK_NAMES) runs; see `skipped_checks`."""
    return name not in skipped_checks()


def re2_program_size(pattern: str) -> int:
    """RE2's program size for `pattern` as Envoy compiles it; re2.error if invalid."""
    return re2.compile(pattern.encode(), _RE2_OPTIONS).programsize


def _shown(pattern: str, limit: int = 80) -> str:
    return repr(pattern if len(pattern) <= limit else pattern[:limit] + "...")


def regex_error(pattern: str) -> str | None:
    """Why Envoy would refuse `pattern` as a safe_regex (RE2), or None."""
    skipped = skipped_checks()
    if "regex-syntax" not in skipped and not pattern:
        return "regex must not be empty (Envoy requires at least one character)"
    try:
        size = re2_program_size(pattern)
    except re2.error as exc:
        if "regex-syntax" in skipped:
            return None
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        return f"invalid RE2 regex {_shown(pattern)}: {str(detail)[:120]}"
    if "re2-program-size" not in skipped and size > RE2_MAX_PROGRAM_SIZE:
        return (
            f"regex {_shown(pattern)} is too complex for Envoy: its RE2 program size is {size}, "
            f"Envoy's limit is {RE2_MAX_PROGRAM_SIZE} (re2.max_program_size.error_level)"
        )
    return None


def port_ok(port: int) -> bool:
    return 0 < port <= 65535


def string_match(
    match: virtual_service_pb2.StringMatch,
    path: Path,
    *,
    empty_prefix_ok: bool = False,
    star_means_any: bool = True,
) -> Iterator[Finding]:
    """A StringMatch as Envoy will compile it. `empty_prefix_ok`: a URI prefix (Envoy's
    RouteMatch.prefix may be empty; StringMatcher.prefix may not). `star_means_any`: the
    translation turns regex "*" into a presence match (headers, query parameters)."""
    kind = match.WhichOneof("match_type")
    if kind == "regex" and not (star_means_any and match.regex == "*"):
        error = regex_error(match.regex)
        if error:
            yield (*path, "regex"), error
    elif kind == "prefix" and not (match.prefix or empty_prefix_ok) and enabled("empty-matcher"):
        yield (
            (*path, "prefix"),
            "an empty prefix is refused by Envoy (StringMatcher.prefix needs at least "
            "one character); use {} to match any value",
        )


def duration(value: duration_pb2.Duration, path: Path, minimum_ms: int = 1) -> Iterator[Finding]:
    """Istio refuses durations under 1ms (negative ones and Envoy's upper limit are the
    generic `duration-range` check's, in checks_envoy)."""
    if value.seconds < 0 or value.nanos < 0:
        return
    millis = value.seconds * 1000 + value.nanos // 1_000_000
    if millis < minimum_ms:
        yield path, f"duration must be at least {minimum_ms}ms"


def percentage(value: float, path: Path) -> Iterator[Finding]:
    if not 0 <= value <= 100:
        yield path, f"percentage {value} out of range 0-100"


def optional_duration(message, name: str, path: Path, minimum_ms: int = 1) -> Iterator[Finding]:
    """Check field `name` of `message` when set; `path` is that field's path."""
    if message.HasField(name):
        yield from duration(getattr(message, name), path, minimum_ms)
