"""Gateway credentials: Secrets become SDS secrets only for a gateway bound to its
identity and in the Secret's namespace; listeners refer to them by name; bad Secrets are
refused at load time in messages that never show a value."""

from __future__ import annotations

import base64
import dataclasses

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from tests.helpers import config_from
from tests.tls_certs import MiniCA
from translators import model
from translators.gateways import credential_secrets
from translators.resources import LISTENER, SECRET
from translators.snapshot import World, translate
from xds_server.config.loader import parse_file

GATEWAY = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [web.example]
    tls: {mode: MUTUAL, credentialName: web}
"""


def _secret(tmp_path, name: str = "web", namespace: str = "default") -> str:
    ca = MiniCA()
    cert, key = ca.issue(tmp_path, "web.example")
    root = ca.write_root(tmp_path / "ca.pem")
    data = {"tls.crt": cert, "tls.key": key, "ca.crt": root}
    lines = "\n".join(
        f"  {k}: {base64.b64encode(v.read_bytes()).decode()}" for k, v in data.items()
    )
    return (
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"type: kubernetes.io/tls\ndata:\n{lines}\n"
    )


def _gateway(mtls: bool, namespace: str = "default") -> model.Proxy:
    return model.Proxy(
        node_id="gw",
        namespace=namespace,
        labels={"istio": "ingressgateway"},
        ip="127.0.0.9",
        role="gateway",
        mtls=mtls,
    )


def test_secrets_go_only_to_a_bound_gateway_of_their_namespace(tmp_path) -> None:
    config = config_from(GATEWAY, _secret(tmp_path))
    bound = translate(World(config), _gateway(True))
    names = sorted(bound[SECRET])
    assert names == ["kubernetes://web", "kubernetes://web-cacert"]
    secret = secret_pb2.Secret()
    bound[SECRET]["kubernetes://web"].any.Unpack(secret)
    assert b"PRIVATE KEY" in secret.tls_certificate.private_key.inline_bytes
    # No token, no identity: no key, whatever it asks for.
    assert SECRET not in translate(World(config), _gateway(False))
    # A gateway of another namespace: not its Secret.
    other = dataclasses.replace(_gateway(True), namespace="prod")
    assert credential_secrets(config, other) == []
    # The listener names them; the key is not in it.
    listener = listener_pb2.Listener()
    (packed,) = bound[LISTENER].values()
    packed.any.Unpack(listener)
    context = tls_pb2.DownstreamTlsContext()
    listener.filter_chains[0].transport_socket.typed_config.Unpack(context)
    common = context.common_tls_context
    assert common.tls_certificate_sds_secret_configs[0].name == "kubernetes://web"
    assert common.validation_context_sds_secret_config.name == "kubernetes://web-cacert"
    assert context.require_client_certificate.value
    assert b"PRIVATE KEY" not in listener.SerializeToString()


def test_bad_secrets_are_refused_without_showing_values(tmp_path) -> None:
    good = _secret(tmp_path)
    for broken, field, words in (
        (good.replace("  tls.key: ", "  tls.key: '!!") + "'", "data.tls.key", "not base64"),
        (
            good.replace(
                "type: kubernetes.io/tls\ndata:\n", "type: kubernetes.io/tls\ndata:\n"
            ).replace("  tls.crt: ", "  other: "),
            "data",
            "needs tls.crt",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringData: {tls.key: SECRET1}\n",
            "stringData.tls.key",
            "not an unencrypted PEM private key",
        ),
    ):
        parsed = parse_file("secret.yaml", broken)
        errors = [i for i in parsed.issues if i.severity == "error"]
        assert errors and errors[0].field == field and words in errors[0].message, [
            str(e) for e in errors
        ]
        assert all("SECRET1" not in str(e) and "LS0t" not in str(e) for e in errors)
    # Even YAML that does not parse is not quoted whole: the parser's message names a tag.
    parsed = parse_file("secret.yaml", good.replace("  tls.key: ", "  tls.key: !!"))
    (error,) = parsed.issues
    assert "invalid YAML" in error.message and "LS0tLS1" not in error.message


def test_odd_secrets_never_crash_or_quote() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    head = "apiVersion: v1\nkind: Secret\nmetadata: {name: c}\n"
    pem = key.decode().replace("\n", "\\n")
    for body in (
        f'stringData: {{key: "{pem}"}}',  # an Ed25519 key alone: fine
        f'immutable: "{pem}"',
        f'"{pem}": 1',
        "data: {x: [1]}",
    ):
        parsed = parse_file("s.yaml", head + body + "\n")
        for issue in parsed.issues:
            assert "PRIVATE KEY" not in str(issue) and "MC4C" not in str(issue), str(issue)
