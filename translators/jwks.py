"""JSON Web Key Sets: whether Envoy's JWT filter can verify tokens with one, and the set
that verifies none (what a sidecar gets while its issuer's keys cannot be fetched).

Envoy drops an inline JWKS it cannot parse with a warning and then refuses every token
of that issuer; we find out at load time instead (inline `jwks`) or when fetching
(`jwksUri`), and say what is wrong with which key.
"""

from __future__ import annotations

import base64
import binascii
import json

from cryptography.hazmat.primitives.asymmetric import ec, rsa

MAX_BYTES = 1024 * 1024  # a key set larger than this is refused, not parsed
_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}

# An RSA public key whose private key was thrown away when it was made: no token
# verifies against it, so an issuer whose keys are unknown fails closed (401), as
# Istio's does. A constant, so that config versions stay the same across restarts.
FAIL_CLOSED = json.dumps(
    {
        "keys": [
            {
                "kty": "RSA",
                "kid": "xds-server-fail-closed",
                "alg": "RS256",
                "e": "AQAB",
                "n": "kmfr-mo6bGPAPZATES57HD_Wp7AxfhCGyNGa0jLtRDnDR-xr1XiFeNoYAwkK83h8Qp4rPrfz"
                "NubTjNxv8CmKbG8M906Cs3NwEGvDQ1T11_iMfhVTHGz3_y4QZ8ievBRdBeQa8pt7b1MDlMN3Ltwx"
                "AJljT7WqGzmgWh-fZ-Bl-4NGtuj0LEp3sZL0IZ7moW0FRGSEGjTu8P92f57Z8EovsaalPR4jI4c"
                "l-kCgcO0mwa2Dx9UpVOBe567XX-C9x2cGGxjsjvYMDN_3lH1OS2NCY_7nw_uJrlzuWafVDDT5Ljh"
                "d_krr9ovBWCQOu0KCCRSLqkyEZtO4TFcMlNweOuNemw",
            }
        ]
    },
    separators=(",", ":"),
)


def problem(text: str | bytes) -> str | None:
    """What keeps `text` from being a key set every key of which Envoy can use; None
    when it is one."""
    if len(text) > MAX_BYTES:
        return f"larger than {MAX_BYTES} bytes"
    try:
        return _problem(text)
    except Exception as error:  # odd JSON shapes must be a finding, never a crash
        return f"not a usable key set ({type(error).__name__})"


def _problem(text: str | bytes) -> str | None:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        return f"not JSON: {str(error)[:120]}"
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return 'not a JWKS: wants an object with a list "keys"'
    if not document["keys"]:
        return "holds no keys"
    for index, key in enumerate(document["keys"]):
        found = _key_problem(key)
        if found is not None:
            return f"keys[{index}]: {found}"
    return None


def _key_problem(key: object) -> str | None:
    if not isinstance(key, dict):
        return "not an object"
    kty = key.get("kty")
    try:
        if kty == "RSA":
            n, e = _number(key, "n"), _number(key, "e")
            if n.bit_length() < 1024:
                return "RSA modulus shorter than 1024 bits"
            rsa.RSAPublicNumbers(e, n).public_key()
        elif kty == "EC":
            crv = key.get("crv")
            curve = _CURVES.get(crv) if isinstance(crv, str) else None
            if curve is None:
                return f"crv {key.get('crv')!r}: wants one of {', '.join(_CURVES)}"
            point = ec.EllipticCurvePublicNumbers(_number(key, "x"), _number(key, "y"), curve())
            point.public_key()
        elif kty == "oct":
            if not _bytes(key, "k"):
                return '"k" is empty'
        elif kty == "OKP":
            if key.get("crv") != "Ed25519":
                return f"crv {key.get('crv')!r}: wants Ed25519"
            if len(_bytes(key, "x")) != 32:
                return '"x" is not an Ed25519 key'
        else:
            return f"kty {kty!r}: wants RSA, EC, oct or OKP"
    except _Missing as missing:
        return str(missing)
    except ValueError as error:
        return f"not a valid {kty} key: {str(error)[:120]}"
    return None


class _Missing(Exception):
    pass


def _bytes(key: dict, name: str) -> bytes:
    value = key.get(name)
    if not isinstance(value, str) or not value:
        raise _Missing(f'"{name}" is missing')
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as error:
        raise _Missing(f'"{name}" is not base64url') from error


def _number(key: dict, name: str) -> int:
    return int.from_bytes(_bytes(key, name), "big")
