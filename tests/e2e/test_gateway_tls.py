"""Gateway TLS through a real Envoy gateway: `credentialName` Secrets served over SDS
(SIMPLE, MUTUAL with the Secret's CA), rotation of a Secret without a listener change,
ISTIO_MUTUAL with the gateway's own mesh certificate; and no key in what the server
shows."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from tests.tls_certs import MiniCA
from xds_server.ca import CertificateAuthority
from xds_server.launcher import LocalMesh, Workload, http_get, wait_until

pytestmark = pytest.mark.e2e
HOST = "web.example"
PORTS = {"simple": 18443, "mutual": 18444, "istio": 18445}

GATEWAY = f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: secure}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {PORTS["simple"]}, name: https, protocol: HTTPS}}
    hosts: [{HOST}]
    tls: {{mode: SIMPLE, credentialName: web-cert}}
  - port: {{number: {PORTS["mutual"]}, name: https-mutual, protocol: HTTPS}}
    hosts: [{HOST}]
    tls: {{mode: MUTUAL, credentialName: web-mutual}}
  - port: {{number: {PORTS["istio"]}, name: https-mesh, protocol: HTTPS}}
    hosts: [{HOST}]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [{HOST}]
  gateways: [secure]
  http:
  - route:
    - destination: {{host: reviews}}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080}}]
"""


def _secret(name: str, cert: Path, key: Path, ca: Path | None = None) -> str:
    data = {"tls.crt": cert.read_bytes(), "tls.key": key.read_bytes()}
    if ca is not None:
        data["ca.crt"] = ca.read_bytes()
    lines = "\n".join(f"  {k}: {base64.b64encode(v).decode()}" for k, v in data.items())
    return (
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\n"
        f"type: kubernetes.io/tls\ndata:\n{lines}\n"
    )


def _get(ip: str, port: int, cafile: Path, client: tuple[Path, Path] | None = None):
    """(status, the server certificate's serial); status 0 when TLS failed."""
    context = ssl.create_default_context(cafile=str(cafile))
    if client is not None:
        context.load_cert_chain(*client)
    try:
        with (
            socket.create_connection((ip, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            serial = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            response = http.client.HTTPResponse(tls)
            response.begin()
            response.read()
            return response.status, serial
    except (OSError, ssl.SSLError):
        return 0, None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway-tls")
    ca = MiniCA()
    files = {"ca": ca.write_root(root / "ca.pem")}
    files["server"] = ca.issue(root, HOST)
    files["client"] = ca.issue(root, "client.example", client=True)
    config = root / "mesh"
    config.mkdir()
    (config / "gateway.yaml").write_text(GATEWAY)
    (config / "web-cert.yaml").write_text(_secret("web-cert", *files["server"]))
    (config / "web-mutual.yaml").write_text(_secret("web-mutual", *files["server"], files["ca"]))
    workloads = [
        Workload("reviews-v1", "reviews"),
        Workload("ingress", "istio-ingressgateway", role="gateway", app_port=None),
    ]
    with LocalMesh(config, workloads, root / "work", tokens=True) as mesh:
        wait_until(mesh.all_synced, 30, "every proxy to sync")
        yield mesh, ca, files, root


def test_credential_name_serves_the_secret_and_rotates_it(setup) -> None:
    mesh, ca, files, root = setup
    ip = mesh.workload("ingress").ip
    status, first = wait_until(
        lambda: (r := _get(ip, PORTS["simple"], files["ca"]))[0] == 200 and r, 20, "SIMPLE"
    )
    modified = mesh.envoy_stats("ingress", "listener_manager.listener_modified")
    assert list(modified) == ["listener_manager.listener_modified"], modified
    # A new certificate in the Secret: served over SDS, the listener untouched.
    (root / "renewed").mkdir()
    renewed = ca.issue(root / "renewed", HOST)
    (mesh.config_dir / "web-cert.yaml").write_text(_secret("web-cert", *renewed))
    wait_until(
        lambda: _get(ip, PORTS["simple"], files["ca"])[1] not in (first, None), 20, "rotation"
    )
    assert mesh.envoy_stats("ingress", "listener_manager.listener_modified") == modified
    assert _get(ip, PORTS["simple"], files["ca"])[0] == 200


def test_mutual_wants_a_client_certificate_from_the_secrets_ca(setup) -> None:
    mesh, _, files, _ = setup
    ip = mesh.workload("ingress").ip
    wait_until(
        lambda: _get(ip, PORTS["mutual"], files["ca"], files["client"])[0] == 200, 20, "MUTUAL"
    )
    assert _get(ip, PORTS["mutual"], files["ca"])[0] == 0  # no client certificate


def test_istio_mutual_uses_the_gateways_mesh_certificate(setup) -> None:
    mesh, _, _, root = setup
    ip = mesh.workload("ingress").ip
    mesh_ca = CertificateAuthority.load_or_create(mesh.work_dir / "state" / "ca")
    issued = mesh_ca.issue("default", "outside")
    cert, key = root / "mesh-client.pem", root / "mesh-client.key"
    cert.write_bytes(issued.chain_pem)
    key.write_bytes(issued.key_pem)
    root_file = mesh.root_cert

    def mesh_get(client):
        context = ssl.create_default_context(cafile=str(root_file))
        context.check_hostname = False  # a mesh certificate names a SPIFFE ID, not a host
        if client:
            context.load_cert_chain(cert, key)
        try:
            with (
                socket.create_connection((ip, PORTS["istio"]), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=HOST) as tls,
            ):
                peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                response = http.client.HTTPResponse(tls)
                response.begin()
                response.read()
                names = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                return response.status, names.value.get_values_for_type(
                    x509.UniformResourceIdentifier
                )
        except (OSError, ssl.SSLError):
            return 0, []

    status, names = wait_until(lambda: (r := mesh_get(True))[0] == 200 and r, 20, "ISTIO_MUTUAL")
    assert names == ["spiffe://cluster.local/ns/default/sa/istio-ingressgateway"]
    assert mesh_get(False)[0] == 0


def test_nothing_the_server_shows_holds_a_key(setup) -> None:
    mesh, _, _, _ = setup
    dump = http_get(f"{mesh.debug_url}/debug/config_dump?proxy=ingress")[1]
    assert "kubernetes://web-cert" in dump and "PRIVATE KEY" not in dump
    assert "PRIVATE KEY" not in http_get(f"{mesh.debug_url}/debug/configz")[1]
    assert "PRIVATE KEY" not in (mesh.work_dir / "xds-server.out").read_text()


GATEWAY_POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gateway-deny, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/blocked*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: gateway-jwt, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules: [{issuer: gateway-issuer, jwks: '%s'}]
"""


def _path_get(ip: str, cafile: Path, path: str, **headers: str) -> int:
    context = ssl.create_default_context(cafile=str(cafile))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with (
        socket.create_connection((ip, PORTS["simple"]), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n"
        tls.sendall(request.encode())
        response = http.client.HTTPResponse(tls)
        response.begin()
        response.read()
        return response.status


def test_policies_that_select_the_gateway_apply_there(setup) -> None:
    from tests.jwt_tokens import Issuer

    mesh, _, files, _ = setup
    ip = mesh.workload("ingress").ip
    issuer = Issuer("gateway-issuer")
    policy = mesh.config_dir / "gateway-policy.yaml"
    policy.write_text(GATEWAY_POLICY % issuer.jwks())
    try:
        wait_until(lambda: _path_get(ip, files["ca"], "/blocked") == 403, 20, "the DENY policy")
        assert _path_get(ip, files["ca"], "/open") == 200
        bad = {"Authorization": "Bearer not.a.token"}
        assert _path_get(ip, files["ca"], "/open", **bad) == 401
        good = {"Authorization": f"Bearer {issuer.token()}"}
        assert _path_get(ip, files["ca"], "/open", **good) == 200
    finally:
        policy.unlink()
