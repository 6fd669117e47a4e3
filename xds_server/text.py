"""Text from outside (node ids, Envoy's NACK messages, YAML values) made safe to log and
show: control characters escaped, so no one can forge a log line, and length bounded."""

from __future__ import annotations

import re

MAX_SHOWN = 2000  # characters of outside text kept in logs and status

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")


def safe_text(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` with control characters escaped, cut to `limit` characters (noting how many
    more there were)."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return _CONTROL.sub(_escape, text)
