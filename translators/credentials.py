"""Kubernetes Secrets as gateway credentials (`credentialName`), with Istio's key names.

A `kubernetes.io/tls` Secret holds `tls.crt`, `tls.key` and optionally `ca.crt`; a
generic one `cert`, `key` and `cacert`. The CA for MUTUAL comes from the Secret itself
or from a Secret named `<name>-cacert`, as Istio reads them. `data` is base64, as
Kubernetes keeps it; `stringData` plain text.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from translators import model

CERT_KEYS, KEY_KEYS, CA_KEYS = ("tls.crt", "cert"), ("tls.key", "key"), ("ca.crt", "cacert")
SDS_PREFIX = "kubernetes://"  # how Istio names credentialName secrets in SDS


@dataclass(frozen=True)
class Credential:
    chain: bytes | None
    key: bytes | None
    ca: bytes | None

    def __repr__(self) -> str:  # never the key, wherever this is printed
        return f"Credential(chain={self.chain is not None}, ca={self.ca is not None})"


def decoded(spec) -> tuple[dict[str, bytes], list[str]]:
    """A Secret's values (data decoded; stringData as text), and the keys of `data`
    whose value is not base64 (never the value)."""
    out: dict[str, bytes] = {}
    bad: list[str] = []
    for key, value in spec.data.items():
        try:
            out[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            bad.append(key)
    for key, value in spec.string_data.items():
        out[key] = value.encode()
    return out, bad


def _first(values: dict[str, bytes], keys: tuple[str, ...]) -> bytes | None:
    return next((values[k] for k in keys if k in values), None)


def find(config: model.MeshConfig, namespace: str, name: str) -> Credential | None:
    """The credential `name` in `namespace`, or None when no such Secret is there."""
    secrets = {s.name: s for s in config.of_kind(model.SECRET) if s.namespace == namespace}
    secret = secrets.get(name)
    if secret is None:
        return None
    values, bad = decoded(secret.spec)
    if bad:  # refused at load; never served in part
        return None
    ca = _first(values, CA_KEYS)
    separate = secrets.get(f"{name}-cacert")
    if ca is None and separate is not None:
        more, bad = decoded(separate.spec)
        ca = None if bad else _first(more, CA_KEYS)
    return Credential(_first(values, CERT_KEYS), _first(values, KEY_KEYS), ca)
