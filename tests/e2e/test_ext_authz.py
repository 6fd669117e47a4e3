"""AuthorizationPolicy CUSTOM through real Envoys: the requests its rules select are
asked of the mesh config's ext_authz provider (a local HTTP service here, reached as a
ServiceEntry host), which allows or denies them; a policy naming no known provider
fails closed."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from tests.helpers import service_yaml
from xds_server.launcher import LocalMesh, Workload, free_port, http_get, wait_until

pytestmark = pytest.mark.e2e
RESULT = "x-ext-authz-check-result"


class _Authz(http.server.BaseHTTPRequestHandler):
    """Istio's sample ext-authz: allows a request whose x-ext-authz header says allow."""

    seen: list[str] = []

    def _answer(self) -> None:
        self.seen.append(self.path)
        allowed = self.headers.get("x-ext-authz") == "allow"
        self.send_response(200 if allowed else 403)
        self.send_header(RESULT, "allowed" if allowed else "denied")
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, *args) -> None:
        pass


def _mesh_config(port: int) -> str:
    return f"""apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        service: ext-authz.local
        port: 8000
        pathPrefix: /check
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [{RESULT}]
        headersToDownstreamOnDeny: [{RESULT}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-authz}}
spec:
  hosts: [ext-authz.local]
  ports: [{{number: 8000, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"""


POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: CUSTOM
  provider: {name: %s}
  rules: [{to: [{operation: {paths: ["/checked*"]}}]}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext-authz")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Authz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = root / "mesh"
    config.mkdir()
    (config / "svc.yaml").write_text(service_yaml("reviews"))
    (config / "mesh.yaml").write_text(_mesh_config(server.server_address[1]))
    workloads = [Workload("sleep", "sleep", app_port=None), Workload("reviews-v1", "reviews")]
    with LocalMesh(config, workloads, root / "work", tokens=True) as running:
        wait_until(running.all_synced, 30, "every sidecar to sync")
        yield running
    server.shutdown()
    server.server_close()


def _call(mesh: LocalMesh, path: str, **headers: str) -> tuple[int, dict]:
    sleep_ip, port = mesh.outbound("sleep")
    status, body = http_get(
        f"http://{sleep_ip}:{port}{path}", timeout=5, headers={"Host": "reviews", **headers}
    )
    return status, (json.loads(body) if status == 200 else {})


def test_custom_asks_the_provider_for_what_its_rules_select(mesh) -> None:
    policy = mesh.config_dir / "policy.yaml"
    policy.write_text(POLICY % "sample-ext-authz-http")
    try:
        wait_until(lambda: _call(mesh, "/checked")[0] == 403, 20, "the CUSTOM policy")
        _Authz.seen.clear()
        status, body = _call(mesh, "/checked/a", **{"x-ext-authz": "allow"})
        assert status == 200
        assert body["headers"][RESULT] == "allowed"  # the provider's header, upstream
        assert _Authz.seen == ["/check/checked/a"]  # pathPrefix, then the request's path
        assert _call(mesh, "/checked", **{"x-ext-authz": "deny"})[0] == 403
        # Not selected by the rules: the provider is not asked.
        _Authz.seen.clear()
        assert _call(mesh, "/other")[0] == 200 and _Authz.seen == []
    finally:
        policy.unlink()
    wait_until(lambda: _call(mesh, "/checked")[0] == 200, 20, "the policy to go")


def test_an_unknown_provider_fails_closed(mesh) -> None:
    policy = mesh.config_dir / "policy.yaml"
    policy.write_text(POLICY % "no-such-provider")
    try:
        wait_until(lambda: _call(mesh, "/checked")[0] == 403, 20, "fail closed")
        assert _call(mesh, "/checked", **{"x-ext-authz": "allow"})[0] == 403
        assert _call(mesh, "/other")[0] == 200
        log = (mesh.work_dir / "xds-server.out").read_text()
        assert "no extension provider 'no-such-provider'" in log
    finally:
        policy.unlink()
