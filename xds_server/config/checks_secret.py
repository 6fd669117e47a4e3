"""Secrets (gateways' credentialName): what Envoy would trip on, found at load time, in
messages that name the key and never show a value."""

from __future__ import annotations

from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from translators.credentials import CA_KEYS, CERT_KEYS, KEY_KEYS, decoded
from xds_server.config.checks_common import Finding

TLS_TYPE = "kubernetes.io/tls"


def _public(key) -> bytes:
    """A public key's bytes, whatever its algorithm."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _where(spec, key: str) -> tuple[str, str]:
    return ("stringData" if key in spec.string_data else "data", key)


def check_secret(spec) -> Iterator[Finding]:
    values, bad = decoded(spec)
    for key in bad:
        yield ("data", key), "not base64 (data holds base64; use stringData for text)"
    if spec.type == TLS_TYPE:
        for needed in ("tls.crt", "tls.key"):
            if needed not in values and needed not in spec.data:
                yield ("data",), f"a {TLS_TYPE} Secret needs {needed}"
    chain = key = None
    for name in CERT_KEYS:
        if name in values:
            try:
                chain = x509.load_pem_x509_certificates(values[name])
            except ValueError:
                yield _where(spec, name), "not a PEM certificate (chain)"
            break
    for name in KEY_KEYS:
        if name in values:
            try:
                key = serialization.load_pem_private_key(values[name], password=None)
            except (ValueError, TypeError):
                yield _where(spec, name), "not an unencrypted PEM private key"
            if (
                chain
                and key is not None
                and _public(key.public_key()) != _public(chain[0].public_key())
            ):
                yield _where(spec, name), "is not the key of the certificate beside it"
            break
    for name in CA_KEYS:
        if name in values:
            try:
                x509.load_pem_x509_certificates(values[name])
            except ValueError:
                yield _where(spec, name), "not a PEM certificate (CA bundle)"
