"""The mesh's certificate authority: a root (made on first start, or the user's, in
Istio's `cacerts` layout) that signs each workload a certificate for its SPIFFE identity.

Keys stay in the state directory, readable by their owner only. Workload certificates
carry the URI SAN `spiffe://<trust domain>/ns/<namespace>/sa/<service account>` and live
24 hours unless told otherwise; workload keys are ECDSA P-256 (RSA 2048 on request).
Signing is CPU work: callers on the event loop run `issue` in a thread.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_CERT, ROOT_KEY = "root-cert.pem", "ca-key.pem"
# Istio's plug-in layout (`cacerts`): the signing certificate and key, the root, and the
# chain from the signing certificate up to the root.
PLUGGED = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")
ROOT_LIFETIME = datetime.timedelta(days=3650)
WORKLOAD_LIFETIME = datetime.timedelta(hours=24)
CLOCK_SKEW = datetime.timedelta(minutes=5)  # not-before this far back


class CAError(RuntimeError):
    """The CA's files are missing, unreadable or do not belong together."""


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True)
class Issued:
    """A workload's key and certificate chain (PEM), and what to show of them."""

    key_pem: bytes
    chain_pem: bytes
    spiffe_id: str
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime

    def __repr__(self) -> str:  # never the key, wherever this is printed
        return f"Issued({self.spiffe_id}, serial={self.serial:x}, until {self.not_after:%FT%TZ})"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """A file only its owner may read, created so from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _new_key(kind: str = "ecdsa"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


class CertificateAuthority:
    """Signs workload certificates with `key`/`cert`, under `root`."""

    def __init__(
        self,
        key,
        cert: x509.Certificate,
        root: x509.Certificate,
        chain: list[x509.Certificate],
        trust_domain: str = "cluster.local",
    ) -> None:
        self._key = key
        self.cert, self.root, self.chain = cert, root, chain
        self.trust_domain = trust_domain

    @classmethod
    def load_or_create(
        cls, directory: Path, plugged: Path | None = None, trust_domain: str = "cluster.local"
    ) -> CertificateAuthority:
        """The user's CA from `plugged` (Istio's cacerts files), else the root kept in
        `directory`, made there on first use."""
        if plugged is not None:
            return cls._plugged(plugged, trust_domain)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path, key_path = directory / ROOT_CERT, directory / ROOT_KEY
        if cert_path.exists() != key_path.exists():
            raise CAError(f"{directory}: {ROOT_CERT} and {ROOT_KEY} go together; one is missing")
        if not cert_path.exists():
            key = _new_key()
            root = _self_signed(key, trust_domain)
            _write_private(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            cert_path.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        key, cert = _read_pair(cert_path, key_path)
        return cls(key, cert, cert, [], trust_domain)

    @classmethod
    def _plugged(cls, directory: Path, trust_domain: str) -> CertificateAuthority:
        missing = [name for name in PLUGGED if not (directory / name).is_file()]
        if missing:
            raise CAError(f"{directory}: missing {', '.join(missing)} (Istio's cacerts layout)")
        key, cert = _read_pair(directory / "ca-cert.pem", directory / "ca-key.pem")
        root = x509.load_pem_x509_certificate((directory / "root-cert.pem").read_bytes())
        chain = x509.load_pem_x509_certificates((directory / "cert-chain.pem").read_bytes())
        # The chain starts at the signing certificate: workloads send what follows it.
        above = [c for c in chain if c != cert]
        return cls(key, cert, root, above, trust_domain)

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        namespace: str,
        service_account: str,
        lifetime: datetime.timedelta = WORKLOAD_LIFETIME,
        key_type: str = "ecdsa",
        trust_domain: str | None = None,
    ) -> Issued:
        """A new key and a certificate for the workload identity ns/sa (in the mesh
        config's trust domain, when given)."""
        identity = spiffe_id(trust_domain or self.trust_domain, namespace, service_account)
        return self._sign([x509.UniformResourceIdentifier(identity)], identity, lifetime, key_type)

    def issue_server(
        self,
        names: list[str],
        addresses: list[str],
        lifetime: datetime.timedelta = WORKLOAD_LIFETIME,
    ) -> Issued:
        """A new key and a certificate for the server's own TLS port (xDS over TLS): the
        DNS names and IP addresses clients may check it by."""
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        return self._sign(sans, "", lifetime, "ecdsa")

    def _sign(
        self,
        sans: list[x509.GeneralName],
        identity: str,
        lifetime: datetime.timedelta,
        key_type: str,
    ) -> Issued:
        key = _new_key(key_type)
        now = _now()
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(
                x509.SubjectAlternativeName(sans),
                critical=True,  # the subject is empty: the SAN is the identity
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=key_type == "rsa",
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        chain = b"".join(c.public_bytes(pem) for c in [cert, *self._intermediates()])
        return Issued(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            chain,
            identity,
            serial,
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
        )

    def _intermediates(self) -> list[x509.Certificate]:
        """What a workload sends above its own certificate: the signing certificate when
        it is not the root, and the chain above it."""
        if self.cert == self.root:
            return []
        return [self.cert, *[c for c in self.chain if c != self.root]]


def _self_signed(key, trust_domain: str) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "xds-server root CA"),
        ]
    )
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _read_pair(cert_path: Path, key_path: Path):
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CAError(f"{cert_path.parent}: cannot read the CA: {exc}") from None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise CAError(f"{key_path} is not the key of {cert_path}")
    return key, cert


def describe(cert_pem: bytes) -> list[dict[str, str]]:
    """What may be shown of a PEM chain: per certificate its subject, SPIFFE ID, serial
    and validity; never key material."""
    out = []
    for cert in x509.load_pem_x509_certificates(cert_pem):
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        out.append(
            {
                "subject": cert.subject.rfc4514_string(),
                "spiffe_id": next((u for u in uris if u.startswith("spiffe://")), ""),
                "serial": f"{cert.serial_number:x}",
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
            }
        )
    return out
