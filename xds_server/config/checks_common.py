"""Helpers shared by the per-kind semantic checks."""

from __future__ import annotations

from collections.abc import Iterator

import re2
from google.protobuf import duration_pb2

from protos import virtual_service_pb2
from xds_server.config.yaml_lines import Path

Finding = tuple[Path, str]

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
# Envoy refuses durations past this (protobuf's own limit is 10000 years).
MAX_DURATION_SECONDS = 315_576_000_000


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


def port_ok(port: int) -> bool:
    return 0 < port <= 65535


def string_match(match: virtual_service_pb2.StringMatch, path: Path) -> Iterator[Finding]:
    if match.WhichOneof("match_type") == "regex" and match.regex != "*":
        error = regex_error(match.regex)
        if error:
            yield (*path, "regex"), error


def duration(value: duration_pb2.Duration, path: Path, minimum_ms: int = 1) -> Iterator[Finding]:
    """Istio refuses durations under 1ms; Envoy refuses absurdly long ones."""
    millis = value.seconds * 1000 + value.nanos // 1_000_000
    if millis < minimum_ms:
        yield path, f"duration must be at least {minimum_ms}ms"
    elif value.seconds > MAX_DURATION_SECONDS:
        yield path, "duration too long"


def percentage(value: float, path: Path) -> Iterator[Finding]:
    if not 0 <= value <= 100:
        yield path, f"percentage {value} out of range 0-100"


def optional_duration(message, name: str, path: Path, minimum_ms: int = 1) -> Iterator[Finding]:
    """Check field `name` of `message` when set; `path` is that field's path."""
    if message.HasField(name):
        yield from duration(getattr(message, name), path, minimum_ms)
