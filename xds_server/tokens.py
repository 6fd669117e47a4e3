"""Workload tokens: which identity an xDS stream may speak for.

`xds-server token` signs `{namespace, service account, expiry}` with a key only the
server holds (HMAC-SHA256, kept in the state directory, readable by its owner only); a
sidecar sends the token in its stream's gRPC metadata (`authorization: Bearer ...`, from
its bootstrap) and the server gives that stream only that identity's secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "token-key"
PREFIX = "xds1"


class TokenError(ValueError):
    """A token that is malformed, forged or expired; the message says which."""


@dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str
    expires: int  # unix seconds


def load_or_create_key(directory: Path) -> bytes:
    """The signing key, made on first use (32 random bytes, owner-only)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / KEY_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) < 32:
        raise TokenError(f"{path}: too short to be a signing key")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: bytes, namespace: str, service_account: str, ttl_seconds: int) -> str:
    payload = json.dumps(
        {"ns": namespace, "sa": service_account, "exp": int(time.time()) + ttl_seconds},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    body = f"{PREFIX}.{_b64(payload)}"
    return f"{body}.{_b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def verify(key: bytes, token: str, now: float | None = None) -> Identity:
    """The identity a token grants; TokenError when it grants none."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError("not an xds-server token")
    body = f"{parts[0]}.{parts[1]}"
    try:
        signature = _unb64(parts[2])
        payload = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed token") from None
    expected = hmac.new(key, body.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise TokenError("bad signature (a token of another server, or altered)")
    try:
        identity = Identity(str(payload["ns"]), str(payload["sa"]), int(payload["exp"]))
    except (KeyError, TypeError, ValueError):
        raise TokenError("malformed token") from None
    if identity.expires <= (time.time() if now is None else now):
        raise TokenError("expired")
    return identity


def from_metadata(metadata) -> str | None:
    """The bearer token of a stream's gRPC metadata, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None
