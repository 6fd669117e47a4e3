"""Test-signed JSON Web Tokens and the key set that verifies them (RS256), so that tests
stand in for an issuer such as testing@secure.istio.io without the network."""

from __future__ import annotations

import base64
import json
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An RSA key, its JWKS, and tokens signed with it."""

    def __init__(self, issuer: str, kid: str = "test-key") -> None:
        self.issuer = issuer
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        numbers = self.key.public_key().public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        key = {"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": _b64(n)}
        key["e"] = _b64(e)
        return json.dumps({"keys": [key]})

    def token(self, lifetime: float = 3600, **claims: object) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "sub": self.issuer, "iat": now, "exp": now + lifetime}
        payload.update(claims)
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"
