"""The mesh's edges through real Envoy: an ingress Gateway (HTTP and HTTPS), outbound
traffic policy ALLOW_ANY vs REGISTRY_ONLY, ServiceEntry resolutions, Sidecar scoping."""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import REGISTRY_ONLY_MESH
from xds_server.launcher import free_port
from xds_server.sample_app import AppSpec, start_apps

pytestmark = pytest.mark.e2e

GATEWAY = """apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: %(http)d, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: %(https)d, name: https, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: SIMPLE, serverCertificate: %(cert)s, privateKey: %(key)s}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /hello}}]
    rewrite: {uri: /}
    route: [{destination: {host: helloworld, subset: v1}}]
"""


def self_signed(directory, host: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def https_get(ip: str, port: int, host: str, path: str, cafile: str) -> tuple[int, str]:
    """GET over TLS to ip:port, with SNI and certificate checks for `host`."""
    context = ssl.create_default_context(cafile=cafile)
    with (
        socket.create_connection((ip, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = http.client.HTTPResponse(tls)
        response.begin()
        response.read()
        return response.status, response.getheader("x-served-by") or ""


def test_gateway_routes_outside_requests_into_the_mesh(mesh, tmp_path):
    cert, key = self_signed(tmp_path, "shop.example.com")
    ports = {"http": 18080, "https": 18443}
    mesh.apply("gateway.yaml", GATEWAY % {**ports, "cert": cert, "key": key})
    gateway_ip = mesh.local.workload("ingress").ip

    conn = http.client.HTTPConnection(gateway_ip, ports["http"], timeout=10)
    conn.request("GET", "/reviews/1", headers={"Host": "anything.example.org"})
    response = conn.getresponse()
    response.read()
    assert (response.status, response.getheader("x-served-by")) == (200, "reviews-v2")
    conn.request("GET", "/hello/there", headers={"Host": "x"})
    response = conn.getresponse()
    body = response.read().decode()
    assert response.getheader("x-served-by") == "helloworld-v1"
    assert '"path": "/there"' in body  # the prefix rewrite
    conn.request("GET", "/elsewhere", headers={"Host": "x"})
    response = conn.getresponse()
    response.read()
    assert response.status == 404  # no route: no implicit fallback
    conn.close()

    status, served_by = https_get(gateway_ip, ports["https"], "shop.example.com", "/reviews", cert)
    assert (status, served_by) == (200, "reviews-v2")
    mesh.remove("gateway.yaml")


@pytest.fixture
def outside_app():
    """A service outside the mesh: no sidecar, not in the registry."""
    port = free_port()
    (server,) = start_apps([AppSpec("outside", "v1", port)])
    yield port
    server.shutdown()
    server.server_close()


REGISTRY_ONLY = REGISTRY_ONLY_MESH

SERVICE_ENTRY = """apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: outside}
spec:
  hosts: [outside.example.com]
  ports: [{number: %(port)d, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: DNS
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: localhost}
spec:
  hosts: [localhost]
  ports: [{number: %(port)d, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: NONE
"""


def test_outbound_traffic_policy_and_service_entries(mesh, outside_app):
    port = outside_app
    # ALLOW_ANY (the default): a host outside the registry passes through.
    reply = mesh.request(f"127.0.0.1:{port}")
    assert (reply.status, reply.headers.get("x-served-by")) == (200, "outside-v1")
    try:
        mesh.apply("mesh.yaml", REGISTRY_ONLY)
        blocked = mesh.request(f"127.0.0.1:{port}")
        assert blocked.status == 502 and "x-served-by" not in blocked.headers
        # A ServiceEntry puts the host in the registry: it is reachable again.
        mesh.apply("serviceentry.yaml", SERVICE_ENTRY % {"port": port})
        reply = mesh.request(f"outside.example.com:{port}")
        assert (reply.status, reply.headers.get("x-served-by")) == (200, "outside-v1")
        # resolution NONE: the proxy connects where the request's host resolves.
        reply = mesh.request(f"localhost:{port}")
        assert (reply.status, reply.headers.get("x-served-by")) == (200, "outside-v1")
        assert mesh.request(f"127.0.0.1:{port}").status == 502  # still not registered
    finally:
        mesh.remove("mesh.yaml")
        mesh.remove("serviceentry.yaml")
    assert mesh.request(f"127.0.0.1:{port}").status == 200


SIDECAR = """apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata: {name: caller}
spec:
  workloadSelector: {labels: {app: caller}}
  egress:
  - hosts: ["./reviews.default.svc.cluster.local"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""


def test_sidecar_egress_scopes_what_a_proxy_receives(mesh):
    helloworld = "outbound|9080||helloworld.default.svc.cluster.local"
    assert mesh.request("helloworld").status == 200
    try:
        mesh.apply("sidecar.yaml", SIDECAR)
        names = {
            c["cluster"]["name"] for c in mesh.envoy_config("caller", "dynamic_active_clusters")
        }
        assert "outbound|9080||reviews.default.svc.cluster.local" in names
        assert helloworld not in names
        assert mesh.request("reviews").status == 200
        assert mesh.request("helloworld").status == 502  # not imported: the catch-all
        # Other proxies are not scoped by the caller's Sidecar.
        other = mesh.envoy_config("reviews-v1", "dynamic_active_clusters")
        assert helloworld in {c["cluster"]["name"] for c in other}
    finally:
        mesh.remove("sidecar.yaml")
    assert mesh.request("helloworld").status == 200
