"""EnvoyFilter through real Envoys: seed 13's local rate limit (as written it never
limits, and says so; enabled, the request past the bucket gets 429), MERGE on a cluster
and on an HTTP route, REMOVE of an HTTP filter, and a patch with a wrong field refused
at its line while Envoy keeps what it had.

(A MERGE of route.timeout would not show: Envoy 1.40 ignores a route's timeout while its
max_stream_duration is set, as every route here has it (routes.py); a header is seen.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import rejections
from xds_server.launcher import LocalMesh, Workload, http_get, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SEED_13 = (ROOT / "examples" / "seed" / "13-envoyfilter-local-ratelimit.yaml").read_text()
SERVICES = """apiVersion: v1
kind: Service
metadata: {name: productpage}
spec:
  selector: {app: productpage}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 9080}]
"""
ENABLED = """            filter_enabled:
              runtime_key: local_rate_limit_enabled
              default_value: {numerator: 100, denominator: HUNDRED}
            filter_enforced:
              runtime_key: local_rate_limit_enforced
              default_value: {numerator: 100, denominator: HUNDRED}
"""
CLUSTER_AND_ROUTE = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: httpbin-tuning, namespace: istio-system}
spec:
  configPatches:
  - applyTo: CLUSTER
    match:
      context: SIDECAR_OUTBOUND
      cluster: {service: httpbin.default.svc.cluster.local, portNumber: 9080}
    patch:
      operation: MERGE
      value: {connect_timeout: 7s}
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration:
        vhost:
          name: "httpbin.default.svc.cluster.local:9080"
          route: {action: ROUTE}
    patch:
      operation: MERGE
      value:
        request_headers_to_add: [{header: {key: x-patched, value: route-merge}}]
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.cors}
    patch: {operation: REMOVE}
"""
WRONG_FIELD = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: wrong, namespace: istio-system}
spec:
  configPatches:
  - applyTo: CLUSTER
    match: {cluster: {service: httpbin.default.svc.cluster.local}}
    patch:
      operation: MERGE
      value:
        connect_timeout: 9s
        circuit_breakers: {thresholds: [{max_conections: 1}]}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("envoyfilter")
    config = root / "mesh"
    config.mkdir()
    (config / "svc.yaml").write_text(SERVICES)
    workloads = [
        Workload("sleep", "sleep", app_port=None),
        Workload("productpage-v1", "productpage"),
        Workload("httpbin-v1", "httpbin"),
    ]
    with LocalMesh(config, workloads, root / "work", tokens=True) as running:
        wait_until(running.all_synced, 30, "every sidecar to sync")
        wait_until(lambda: _call(running, "productpage") == 200, 20, "productpage to answer")
        yield running
        rejected = rejections(running)
    assert not rejected, f"Envoy rejected configuration: {rejected}"


def _call(mesh: LocalMesh, host: str, headers=None) -> int:
    ip, port = mesh.outbound("sleep")
    url = f"http://{ip}:{port}/"
    return http_get(url, timeout=5, headers={"Host": host, **(headers or {})})[0]


def _headers(mesh: LocalMesh, host: str) -> dict[str, str]:
    """The request headers the app behind `host` saw."""
    ip, port = mesh.outbound("sleep")
    status, body = http_get(f"http://{ip}:{port}/", timeout=5, headers={"Host": host})
    assert status == 200, body
    return json.loads(body)["headers"]


def _remove(mesh: LocalMesh, name: str) -> None:
    path = mesh.config_dir / name
    path.unlink()

    def gone() -> bool:
        configz = mesh.debug_json("/debug/configz")
        return str(path) not in configz["files"] and configz["pushed_version"] == configz["version"]

    wait_until(gone, 15, f"{name} to be dropped")
    generation = mesh.debug_json("/debug/configz")["config_generation"]
    wait_until(lambda: mesh.all_synced(generation), 15, "every proxy to ACK")


def _dump(mesh: LocalMesh, workload: str, resource: str) -> list[dict]:
    status, body = http_get(
        f"{mesh.admin_url(workload)}/config_dump?resource={resource}", timeout=5
    )
    assert status == 200, body
    return json.loads(body).get("configs", [])


def _issues(mesh: LocalMesh, name: str, severity: str) -> list[dict]:
    issues = mesh.debug_json("/debug/configz")["issues"]
    return [i for i in issues if i["file"].endswith(name) and i["severity"] == severity]


def test_seed_13_as_written_warns_and_never_limits(mesh) -> None:
    mesh.apply("ratelimit.yaml", SEED_13.replace("max_tokens: 100", "max_tokens: 2"))
    (warning,) = _issues(mesh, "ratelimit.yaml", "warning")
    assert "never limits" in warning["message"] and warning["line"] > 1
    listeners = json.dumps(_dump(mesh, "productpage-v1", "dynamic_listeners"))
    assert "envoy.filters.http.local_ratelimit" in listeners  # applied as written
    assert [_call(mesh, "productpage") for _ in range(6)] == [200] * 6


def test_seed_13_enabled_limits_past_the_bucket(mesh) -> None:
    text = SEED_13.replace("max_tokens: 100", "max_tokens: 3").replace(
        "tokens_per_fill: 100", "tokens_per_fill: 3"
    )
    bucket = "            token_bucket:\n"
    assert bucket in text
    text = text.replace(bucket, ENABLED + bucket)
    mesh.apply("ratelimit.yaml", text)
    assert not _issues(mesh, "ratelimit.yaml", "warning")
    # A connection the previous listener took drains first (up to a second); then the
    # new filter's bucket of 3 runs out and stays empty for its 60 s.
    codes: list[int] = []
    wait_until(
        lambda: codes.append(_call(mesh, "productpage")) or codes[-1] == 429,
        15,
        "a request past the bucket to get 429",
        interval=0.1,
    )
    assert codes.count(200) >= 3, codes
    assert [_call(mesh, "productpage") for _ in range(3)] == [429] * 3
    assert _call(mesh, "httpbin") == 200  # only productpage's inbound side is limited
    _remove(mesh, "ratelimit.yaml")
    # The limited listener's connections drain (a second), then nothing limits.
    wait_until(lambda: _call(mesh, "productpage") == 200, 10, "productpage unlimited again")


def test_merge_on_a_cluster_and_a_route_and_remove_of_a_filter(mesh) -> None:
    assert "x-patched" not in _headers(mesh, "httpbin")
    mesh.apply("tuning.yaml", CLUSTER_AND_ROUTE)
    clusters = {
        c["cluster"]["name"]: c["cluster"] for c in _dump(mesh, "sleep", "dynamic_active_clusters")
    }
    assert clusters["outbound|9080||httpbin.default.svc.cluster.local"]["connect_timeout"] == "7s"
    other = clusters["outbound|9080||productpage.default.svc.cluster.local"]
    assert other["connect_timeout"] != "7s"
    # The route to httpbin adds a header now; the one to productpage does not.
    assert _headers(mesh, "httpbin").get("x-patched") == "route-merge"
    assert "x-patched" not in _headers(mesh, "productpage")
    listeners = json.dumps(_dump(mesh, "sleep", "dynamic_listeners"))
    assert "envoy.filters.http.cors" not in listeners
    assert "envoy.filters.http.fault" in listeners


def test_a_wrong_field_is_refused_at_its_line_and_envoy_keeps_its_config(mesh) -> None:
    path = mesh.config_dir / "wrong.yaml"
    path.write_text(WRONG_FIELD)
    wait_until(lambda: _issues(mesh, "wrong.yaml", "error"), 15, "the error to be reported")
    (error,) = _issues(mesh, "wrong.yaml", "error")
    assert "max_conections" in error["message"] and error["line"] >= 10, error
    clusters = {
        c["cluster"]["name"]: c["cluster"] for c in _dump(mesh, "sleep", "dynamic_active_clusters")
    }
    assert clusters["outbound|9080||httpbin.default.svc.cluster.local"]["connect_timeout"] == "7s"
    assert _call(mesh, "httpbin") == 200
