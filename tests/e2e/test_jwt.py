"""RequestAuthentication and JWT authorization through real Envoys: seeds 17 and 21, with
a local JWKS server standing in for the issuers' and tokens signed in the test. The server
fetches the keys and inlines them; the sidecars never reach the JWKS server."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from tests.jwt_tokens import Issuer
from xds_server.launcher import LocalMesh, Workload, http_get, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ISTIO_TESTING = Issuer("testing@secure.istio.io")
AUTH_EXAMPLE = Issuer("https://auth.example.com")
STRANGER = Issuer("testing@secure.istio.io", kid="test-key")  # same name, other key

PRODUCTION_WEB = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: production}
spec:
  selector: {app: web}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 9080}]
"""


class _Keys(http.server.BaseHTTPRequestHandler):
    routes: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802
        body = self.routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        if body is not None:
            self.wfile.write(body.encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def jwks_server():
    _Keys.routes = {
        "/istio/jwks.json": ISTIO_TESTING.jwks(),
        "/auth/.well-known/jwks.json": AUTH_EXAMPLE.jwks(),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Keys)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, jwks_server):
    root = tmp_path_factory.mktemp("jwt")
    config = root / "mesh"
    config.mkdir()
    (config / "svc.yaml").write_text(PRODUCTION_WEB)
    seed17 = (ROOT / "examples" / "seed" / "17-jwt-authz.yaml").read_text()
    public = "https://raw.githubusercontent.com/istio/istio/release-1.14/security/tools/jwt/samples/jwks.json"
    assert public in seed17
    (config / "seed17.yaml").write_text(seed17.replace(public, f"{jwks_server}/istio/jwks.json"))
    seed21 = (ROOT / "examples" / "seed" / "21-exercise-mtls-jwt-authz.yaml").read_text()
    public = "https://auth.example.com/.well-known/jwks.json"
    assert public in seed21
    (config / "seed21.yaml").write_text(
        seed21.replace(public, f"{jwks_server}/auth/.well-known/jwks.json")
    )
    workloads = [
        Workload("sleep", "sleep", app_port=None),
        Workload("httpbin-v1", "httpbin"),
        Workload("web-v1", "web", namespace="production"),
    ]
    with LocalMesh(config, workloads, root / "work", tokens=True) as running:
        wait_until(running.all_synced, 30, "every sidecar to sync")
        yield running


def _call(mesh: LocalMesh, host: str, token: str | None = None) -> int:
    sleep_ip, port = mesh.outbound("sleep")
    headers = {"Host": host}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http_get(f"http://{sleep_ip}:{port}/headers", timeout=5, headers=headers)[0]


def test_seed_17_tokens_with_group1_get_through(mesh) -> None:
    good = ISTIO_TESTING.token(groups=["group1", "group2"])
    wait_until(lambda: _call(mesh, "httpbin", good) == 200, 20, "a valid token to pass")
    assert _call(mesh, "httpbin") == 403  # no token: authorization wants a principal
    assert _call(mesh, "httpbin", "not.a.token") == 401
    # Expired (beyond the 60 s of clock skew Envoy allows by default).
    assert _call(mesh, "httpbin", ISTIO_TESTING.token(lifetime=-600, groups=["group1"])) == 401
    assert _call(mesh, "httpbin", STRANGER.token(groups=["group1"])) == 401  # wrong key
    assert _call(mesh, "httpbin", ISTIO_TESTING.token(groups=["group2"])) == 403
    assert _call(mesh, "httpbin", ISTIO_TESTING.token(groups="group1")) == 200  # a string claim
    # Another subject is another request principal: not the one the policy names.
    assert _call(mesh, "httpbin", ISTIO_TESTING.token(sub="someone", groups=["group1"])) == 403


def test_seed_21_strict_and_any_subject_of_the_issuer(mesh) -> None:
    good = AUTH_EXAMPLE.token(sub="alice")
    wait_until(lambda: _call(mesh, "web.production", good) == 200, 20, "a valid token to pass")
    assert _call(mesh, "web.production", AUTH_EXAMPLE.token(sub="bob/2")) == 200
    assert _call(mesh, "web.production") == 403
    assert _call(mesh, "web.production", AUTH_EXAMPLE.token(lifetime=-600)) == 401
    # A token of an issuer that production does not trust.
    assert _call(mesh, "web.production", ISTIO_TESTING.token()) == 401
    # STRICT: plaintext straight to the inbound port is refused, even with a good token.
    web_ip = mesh.workload("web-v1").ip
    status, _ = http_get(
        f"http://{web_ip}:15006/", timeout=3, headers={"Authorization": f"Bearer {good}"}
    )
    assert status == 0


def test_unreachable_jwks_fails_closed_and_recovers(mesh, jwks_server) -> None:
    """A jwksUri the server cannot fetch: tokens of its issuer get 401, never 200; once
    the keys can be had they work, without a config edit."""
    path = "/later/jwks.json"
    issuer = Issuer("later@example.com")
    policy = mesh.config_dir / "later.yaml"
    policy.write_text(
        f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: later, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules: [{{issuer: later@example.com, jwksUri: '{jwks_server}{path}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: later, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  rules: [{{from: [{{source: {{requestPrincipals: ['later@example.com/*']}}}}]}}]
"""
    )
    try:
        token = issuer.token()
        wait_until(lambda: _call(mesh, "httpbin", token) == 401, 20, "the policy to apply")
        for _ in range(3):
            assert _call(mesh, "httpbin", token) == 401
        _Keys.routes[path] = issuer.jwks()
        # Failed fetches are retried with backoff (1 s, 2 s, 4 s, ...).
        wait_until(lambda: _call(mesh, "httpbin", token) == 200, 30, "the keys to be fetched")
    finally:
        policy.unlink()
        _Keys.routes.pop(path, None)
