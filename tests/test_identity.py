"""Workload identity over xDS: tokens bind a stream to a namespace and service account,
and only a bound stream gets SDS secrets (its key and SPIFFE certificate, and the root),
renewed on their own; keys never show in what the server prints."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from tests.helpers import service_yaml
from tests.test_ads_protocol import Client
from translators.resources import CLUSTER, SECRET
from xds_server import tokens
from xds_server.ca import CAError, CertificateAuthority, describe
from xds_server.launcher import free_port, http_get
from xds_server.server import STATE_DIR_NAME, ControlPlane, ServerOptions
from xds_server.status import config_dump


class TokenClient(Client):
    """An ADS stream that sends `token` as its bearer token, for `node_id` in
    namespace `default` with service account `sa`."""

    def __init__(self, channel, node_id: str, token: str | None, sa: str = "caller") -> None:
        self.token = token
        super().__init__(channel, node_id)
        self.node.metadata.update({"SERVICE_ACCOUNT": sa})

    def _call(self, stub, requests):
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        return stub.StreamAggregatedResources(requests, metadata=metadata)


@pytest.fixture
async def make_plane(tmp_path: Path):
    planes = []

    async def make(**options) -> tuple[ControlPlane, grpc.aio.Channel, bytes]:
        config_dir = tmp_path / "mesh"
        config_dir.mkdir(exist_ok=True)
        (config_dir / "svc.yaml").write_text(service_yaml("reviews"))
        control = ControlPlane(
            ServerOptions(
                config_dir,
                **{"xds_port": free_port(), "xds_tls_port": 0, **options},
                debug_port=free_port(),
                debounce_ms=10,
            )
        )
        await control.start()
        # Keys go only over TLS: the tests speak to the TLS port, checking its certificate.
        root = config_dir / STATE_DIR_NAME / "ca" / "root-cert.pem"
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{control.xds_tls_port}",
            grpc.ssl_channel_credentials(root.read_bytes()),
            options=[("grpc.ssl_target_name_override", "xds-server")],
        )
        planes.append((control, channel))
        key = tokens.load_or_create_key(config_dir / STATE_DIR_NAME)
        return control, channel, key

    yield make
    for control, channel in planes:
        await channel.close()
        await control.stop()


async def _secrets(client: Client) -> dict[str, secret_pb2.Secret]:
    client.send(CLUSTER)
    await client.recv()
    client.send(SECRET, ["default", "ROOTCA"])
    response = await client.recv()
    assert response.type_url == SECRET
    for _ in range(20):  # a slow key (RSA) comes in a later response
        if response.resources:
            break
        client.send(SECRET, ["default", "ROOTCA"], response.nonce, response.version_info)
        response = await client.recv(timeout=5)
    out = {}
    for packed in response.resources:
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        out[secret.name] = secret
    return out


async def test_a_stream_with_a_token_gets_its_identitys_certificate(make_plane) -> None:
    control, channel, key = await make_plane()
    client = TokenClient(channel, "caller", tokens.issue(key, "default", "caller", 60))
    secrets = await _secrets(client)
    chain = secrets["default"].tls_certificate.certificate_chain.inline_bytes
    assert b"PRIVATE KEY" in secrets["default"].tls_certificate.private_key.inline_bytes
    (leaf,) = describe(chain)
    assert leaf["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/caller"
    root = x509.load_pem_x509_certificate(
        secrets["ROOTCA"].validation_context.trusted_ca.inline_bytes
    )
    cert = x509.load_pem_x509_certificate(chain)
    cert.verify_directly_issued_by(root)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(hours=24) <= lifetime <= datetime.timedelta(hours=24, minutes=6)
    # What the server shows of this proxy holds no key.
    info = control.servicer.latest_streams()["caller"]
    assert "PRIVATE KEY" not in json.dumps(config_dump(info))
    assert "PRIVATE KEY" not in repr(control.identity.current["caller"])
    client.close()


async def test_no_token_no_secret_and_bad_tokens_are_refused(make_plane) -> None:
    _, channel, key = await make_plane()
    anonymous = TokenClient(channel, "caller", None)
    anonymous.send(CLUSTER)
    await anonymous.recv()  # config, as before
    anonymous.send(SECRET, ["default", "ROOTCA"])
    response = await anonymous.recv()
    assert not response.resources  # but no secret
    anonymous.close()
    for token, why in (
        ("xds1.e30.AAAA", "bad signature"),
        (tokens.issue(key, "default", "caller", -1), "expired"),
        (tokens.issue(b"x" * 32, "default", "caller", 60), "bad signature"),
        (tokens.issue(key, "default", "reviews", 60), "claims ns/default/sa/caller"),
        (tokens.issue(key, "prod", "caller", 60), "claims ns/default/sa/caller"),
    ):
        client = TokenClient(channel, "caller", token)
        client.send(CLUSTER)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.recv()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert why in refused.value.details()
        client.close()


async def test_no_secret_over_plaintext_even_with_a_good_token(make_plane) -> None:
    control, _, key = await make_plane()
    plain = grpc.aio.insecure_channel(f"127.0.0.1:{control.xds_port}")
    try:
        client = TokenClient(plain, "caller", tokens.issue(key, "default", "caller", 60))
        client.send(CLUSTER)
        await client.recv()  # its config, as before
        client.send(SECRET, ["default", "ROOTCA"])
        assert not (await client.recv()).resources
        assert "caller" not in control.identity.current
        client.close()
    finally:
        await plain.close()


async def test_required_tokens_and_one_identity_per_node_id(make_plane) -> None:
    _, channel, key = await make_plane(require_tokens=True)
    anonymous = TokenClient(channel, "caller", None)
    anonymous.send(CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await anonymous.recv()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    anonymous.close()
    first = TokenClient(channel, "caller", tokens.issue(key, "default", "caller", 60))
    await _secrets(first)
    # Another workload claiming the same node id with its own (valid) token: refused.
    other = tokens.issue(key, "default", "intruder", 60)
    intruder = TokenClient(channel, "caller", other)
    intruder.node.metadata.update({"SERVICE_ACCOUNT": "intruder"})
    intruder.send(CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await intruder.recv()
    assert "another identity" in refused.value.details()
    intruder.close()
    first.close()


async def test_certificates_are_renewed_on_their_own(make_plane) -> None:
    control, channel, key = await make_plane(cert_lifetime_s=2.0)
    client = TokenClient(channel, "caller", tokens.issue(key, "default", "caller", 60))
    first = (await _secrets(client))["default"].tls_certificate.certificate_chain.inline_bytes
    renewed = await client.recv(timeout=5)  # within half the lifetime (1 s, and a bit)
    assert renewed.type_url == SECRET
    secret = secret_pb2.Secret()
    [s for s in renewed.resources if secret.ParseFromString(s.value) or secret.name == "default"]
    assert (
        describe(secret.tls_certificate.certificate_chain.inline_bytes)[0]["serial"]
        != (describe(first)[0]["serial"])
    )
    assert control.identity.issued["caller"] >= 2
    client.close()


def test_the_ca_keeps_its_key_to_itself_and_takes_istios_cacerts(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert (tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o077 == 0
    assert CertificateAuthority.load_or_create(tmp_path / "ca").root_pem == ca.root_pem
    plugged = tmp_path / "cacerts"
    plugged.mkdir()
    with pytest.raises(CAError, match="missing"):
        CertificateAuthority.load_or_create(tmp_path / "x", plugged)
    # The user's signing certificate and key, their root and the chain between.
    signer = CertificateAuthority.load_or_create(tmp_path / "signer")
    (plugged / "ca-cert.pem").write_bytes(signer.root_pem)
    (plugged / "ca-key.pem").write_bytes((tmp_path / "signer" / "ca-key.pem").read_bytes())
    (plugged / "root-cert.pem").write_bytes(ca.root_pem)
    (plugged / "cert-chain.pem").write_bytes(signer.root_pem + ca.root_pem)
    user = CertificateAuthority.load_or_create(tmp_path / "y", plugged)
    assert user.root_pem == ca.root_pem  # what workloads trust
    chain = x509.load_pem_x509_certificates(user.issue("default", "sleep").chain_pem)
    assert len(chain) == 2  # the workload's, then the signing certificate
    chain[0].verify_directly_issued_by(chain[1])
    (plugged / "ca-key.pem").write_bytes((tmp_path / "ca" / "ca-key.pem").read_bytes())
    with pytest.raises(CAError, match="is not the key of"):
        CertificateAuthority.load_or_create(tmp_path / "z", plugged)


async def test_the_debug_api_wants_an_admin_token_when_told(make_plane) -> None:
    control, _, key = await make_plane(debug_require_token=True)
    url = f"http://127.0.0.1:{control.options.debug_port}"

    def get(path: str, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return http_get(url + path, headers=headers)[0]

    admin = tokens.issue(key, "istio-system", "xds-admin", 60)
    workload = tokens.issue(key, "default", "sleep", 60)
    assert await asyncio.to_thread(get, "/healthz", None) == 200  # probes need none
    for path in ("/debug/syncz", "/debug/certz", "/debug/configz"):
        assert await asyncio.to_thread(get, path, None) == 401
        assert await asyncio.to_thread(get, path, workload) == 401  # a workload's is not
        assert await asyncio.to_thread(get, path, admin) == 200


def _served_certificate(port: int, root: Path, name: str = "xds-server") -> x509.Certificate:
    """The certificate the TLS port serves, checked against `root` and `name`."""
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(root))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


async def test_xds_over_tls_with_a_certificate_from_the_mesh_root(make_plane, tmp_path) -> None:
    control, _, key = await make_plane(xds_port=None, cert_lifetime_s=2.0)
    assert control.grpc_server is not None and control.xds_tls_port
    root = tmp_path / "mesh" / STATE_DIR_NAME / "ca" / "root-cert.pem"
    credentials = grpc.ssl_channel_credentials(root.read_bytes())
    secure = grpc.aio.secure_channel(
        f"127.0.0.1:{control.xds_tls_port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "xds-server")],
    )
    try:
        client = TokenClient(secure, "caller", tokens.issue(key, "default", "caller", 60))
        secrets = await _secrets(client)  # a whole ADS exchange, over TLS
        assert "default" in secrets
        client.close()
    finally:
        await secure.close()
    # The plaintext port is off.
    assert control.options.xds_port is None
    first = await asyncio.to_thread(_served_certificate, control.xds_tls_port, root)
    names = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "xds-server" in names.get_values_for_type(x509.DNSName)
    # Another root does not verify it.
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.to_thread(
            _served_certificate, control.xds_tls_port, tmp_path / "other-ca" / "root-cert.pem"
        )
    assert other.root_pem != root.read_bytes()
    # Renewed at half its lifetime (1 s here), without a restart.
    await asyncio.sleep(1.2)
    second = await asyncio.to_thread(_served_certificate, control.xds_tls_port, root)
    assert second.serial_number != first.serial_number
    status = control.status_extra()["xds"]
    assert status["plaintext_port"] is None and status["tls_port"] == control.xds_tls_port
    assert "PRIVATE KEY" not in json.dumps(status)


async def test_rsa_workload_keys_as_an_option(make_plane) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    _, channel, key = await make_plane(workload_key="rsa")
    client = TokenClient(channel, "caller", tokens.issue(key, "default", "caller", 60))
    secrets = await _secrets(client)
    pem = secrets["default"].tls_certificate.private_key.inline_bytes
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    client.close()
