"""DestinationRule `tls` through real Envoys: TLS origination to an external HTTPS server
(SIMPLE, with Istio's egress sample shape: port 80 to targetPort 443), MUTUAL with a
client certificate, verification failures, and ISTIO_MUTUAL / DISABLE between sidecars.
The upstream servers are local Python HTTPS servers with certificates from a test CA."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from pathlib import Path

import pytest

from tests.helpers import service_yaml
from tests.tls_certs import MiniCA
from xds_server.launcher import LocalMesh, Workload, free_port, http_get, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
HOST = "secure.example"


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        peer = self.connection.getpeercert()
        body = json.dumps(
            {
                "tls": True,
                "sni": getattr(self.connection, "sni", None),
                "client": dict(x[0] for x in peer["subject"]) if peer else None,
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _https_server(cert: Path, key: Path, client_ca: Path | None = None):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED

    def remember_sni(sock, name, _context) -> None:
        sock.sni = name

    context.sni_callback = remember_sni
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Echo)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("client-tls")
    ca, other = MiniCA(), MiniCA("another CA")
    ca_file, other_file = ca.write_root(root / "ca.pem"), other.write_root(root / "other.pem")
    server_cert = ca.issue(root, HOST)
    client_cert = ca.issue(root, "sleep.client", client=True)
    simple = _https_server(*server_cert)
    mutual = _https_server(*server_cert, client_ca=ca_file)
    config = root / "mesh"
    config.mkdir()
    (config / "svc.yaml").write_text(service_yaml("reviews"))
    # Istio's egress TLS origination sample, with a static endpoint standing in for DNS.
    (config / "external.yaml").write_text(
        f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [{HOST}]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: {simple.server_address[1]}}}
  - {{number: 81, name: http-mutual, protocol: HTTP, targetPort: {mutual.server_address[1]}}}
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"""
    )
    workloads = [Workload("sleep", "sleep", app_port=None), Workload("reviews-v1", "reviews")]
    with LocalMesh(config, workloads, root / "work", tokens=True) as mesh:
        wait_until(mesh.all_synced, 30, "every sidecar to sync")
        yield (
            mesh,
            {
                "ca": ca_file,
                "other": other_file,
                "client": client_cert,
            },
        )
    simple.shutdown()
    mutual.shutdown()


def _rule(mesh: LocalMesh, text: str) -> None:
    (mesh.config_dir / "dr.yaml").write_text(text)


def _external(mesh: LocalMesh, port: int = 80) -> tuple[int, dict]:
    sleep_ip, outbound = mesh.outbound("sleep")
    status, body = http_get(
        f"http://{sleep_ip}:{outbound}/", timeout=5, headers={"Host": f"{HOST}:{port}"}
    )
    return status, (json.loads(body) if status == 200 else {"body": body})


def _tls_rule(port_settings: str) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
{port_settings}"""


def _port_tls(port: int, **tls: object) -> str:
    """A DestinationRule for HOST whose port `port` has these tls fields."""
    fields = ", ".join(f"{k}: {v}" for k, v in tls.items())
    return _tls_rule(f"    - {{port: {{number: {port}}}, tls: {{{fields}}}}}")


def test_simple_tls_origination_verifies_the_server(setup) -> None:
    mesh, files = setup
    _rule(mesh, _port_tls(80, mode="SIMPLE", caCertificates=files["ca"]))
    status, body = wait_until(lambda: (r := _external(mesh))[0] == 200 and r, 20, "TLS origination")
    assert body == {"tls": True, "sni": HOST, "client": None}
    # Another CA: the server's certificate does not verify, no request goes through.
    _rule(mesh, _port_tls(80, mode="SIMPLE", caCertificates=files["other"]))
    wait_until(lambda: _external(mesh)[0] == 503, 20, "verification to fail")
    # ... unless told not to verify.
    skip = _port_tls(80, mode="SIMPLE", caCertificates=files["other"], insecureSkipVerify="true")
    _rule(mesh, skip)
    wait_until(lambda: _external(mesh)[0] == 200, 20, "insecureSkipVerify")
    # A name the certificate does not carry.
    names = _port_tls(
        80, mode="SIMPLE", caCertificates=files["ca"], subjectAltNames="[other.example]"
    )
    _rule(mesh, names)
    wait_until(lambda: _external(mesh)[0] == 503, 20, "the SAN check to fail")


def test_mutual_tls_presents_the_client_certificate(setup) -> None:
    mesh, files = setup
    cert, key = files["client"]
    _rule(mesh, _port_tls(81, mode="SIMPLE", caCertificates=files["ca"]))
    wait_until(lambda: _external(mesh, 81)[0] == 503, 20, "no client certificate, no entry")
    mutual = _port_tls(
        81,
        mode="MUTUAL",
        caCertificates=files["ca"],
        clientCertificate=cert,
        privateKey=key,
        sni=HOST,
    )
    _rule(mesh, mutual)
    status, body = wait_until(
        lambda: (r := _external(mesh, 81))[0] == 200 and r, 20, "mutual TLS origination"
    )
    assert body["client"] == {"commonName": "sleep.client"} and body["sni"] == HOST


def _caller_seen(mesh: LocalMesh) -> str:
    sleep_ip, outbound = mesh.outbound("sleep")
    status, body = http_get(
        f"http://{sleep_ip}:{outbound}/", timeout=5, headers={"Host": "reviews"}
    )
    assert status == 200, body
    return json.loads(body)["headers"].get("x-forwarded-client-cert", "")


def test_istio_mutual_sample_and_disable_between_sidecars(setup) -> None:
    mesh, _ = setup
    # Istio's destination-rule-all-mtls.yaml, as it is.
    sample = (ROOT / "tests" / "istio_samples" / "destination-rule-all-mtls.yaml").read_text()
    (mesh.config_dir / "svc.yaml").write_text(
        service_yaml("reviews").split("---")[0]  # the Service; the sample brings the rules
    )
    _rule(mesh, sample)
    wait_until(lambda: "sa/sleep" in _caller_seen(mesh), 20, "mutual TLS by rule")
    stats = mesh.envoy_stats("sleep", r"cluster\.outbound\|9080\|\|reviews.*ssl\.handshake")
    assert any(int(v) > 0 for v in stats.values()), stats
    # DISABLE: plaintext even though reviews holds a certificate (PERMISSIVE takes it).
    _rule(mesh, sample.replace("ISTIO_MUTUAL", "DISABLE"))
    wait_until(lambda: _caller_seen(mesh) == "", 20, "plaintext by rule")
    assert all(_caller_seen(mesh) == "" for _ in range(5))
    (mesh.config_dir / "dr.yaml").unlink()
    (mesh.config_dir / "svc.yaml").write_text(service_yaml("reviews"))
    wait_until(lambda: "sa/sleep" in _caller_seen(mesh), 20, "auto mTLS again")
