"""`xds-server inject --mode capture`, run: a plain compose file with seeds 01 and 06's
workloads, injected, then run as local pods as compose would run it (tests/compose_pods.py),
routes as the seeds say, with apps that have no proxy settings; and so does the
repository's docker-compose.yml, the injected form of docker-compose.plain.yml."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from tests.compose_pods import ComposePods
from tests.pods import need_namespaces, probe
from xds_server.netns import run_prefix
from xds_server.pods import APP_UID

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PLAIN = ROOT / "tests" / "inject" / "bookinfo.yaml"
ROUTES = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 75}
    - {destination: {host: reviews, subset: v2}, weight: 25}
"""


def _injected_bookinfo(work: Path) -> tuple[Path, Path]:
    compose = work / "docker-compose.yml"
    subprocess.run(
        [sys.executable, "-m", "xds_server", "inject", str(PLAIN), "--mode", "capture"]
        + ["-o", str(compose), "--emit-services", str(work / "mesh")],
        check=True,
        timeout=60,
    )
    (work / "mesh" / "reviews-routes.yaml").write_text(ROUTES)
    return compose, work / "mesh"


def _repository_compose(work: Path) -> tuple[Path, Path]:
    """The repository's docker-compose.yml (the injected docker-compose.plain.yml) with
    the demo's mesh, which its control plane serves."""
    return ROOT / "docker-compose.yml", ROOT / "xds_server" / "demo_mesh"


@pytest.fixture(scope="module", params=[_injected_bookinfo, _repository_compose])
def pods(request):
    need_namespaces()
    work = Path(tempfile.mkdtemp(prefix="xds-inject-pods-"))
    compose, config = request.param(work)
    mesh = ComposePods(compose, config, work / "run", run_prefix())
    try:
        mesh.start()
        try:
            mesh.wait_ready()
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"the injected pods never came up: {exc}\n{mesh.logs()}")
        yield mesh
    finally:
        mesh.stop()
        shutil.rmtree(work, ignore_errors=True)


def _get(mesh: ComposePods, url: str, *headers: str) -> tuple[int, str]:
    status, _, body = probe(mesh.pods["sleep"].namespace, APP_UID, "http", url, *headers).partition(
        "\n"
    )
    return (int(status) if status.isdigit() else 0), body


def test_the_injected_file_run_as_pods_routes_as_the_seeds_say(pods) -> None:
    pods.wait_for(lambda: _get(pods, "http://reviews:9080/")[0] == 200, 30, "reviews")
    versions = Counter()
    for _ in range(40):
        status, body = _get(pods, "http://reviews:9080/")
        assert status == 200, body
        versions["v2" if '"version": "v2"' in body else "v1"] += 1
    assert versions["v1"] > versions["v2"] > 0, versions  # 75/25
    for _ in range(10):
        status, body = _get(pods, "http://reviews:9080/", "end-user:jason")
        assert status == 200 and '"version": "v2"' in body, body
    caller = pods.envoy_stats("sleep")
    assert caller["listener.0.0.0.0_9080.downstream_cx_total"] > 0
    assert caller["cluster.outbound|9080|v2|reviews.default.svc.cluster.local.upstream_rq_total"]
    assert pods.envoy_stats("reviews-v2")["listener.0.0.0.0_15006.downstream_cx_total"] > 0
    # The sidecars got their tokens from xds-identity: xDS over TLS, certificates, and
    # mutual TLS between the pods, the callee seeing the caller's identity.
    assert caller["cluster.xds_cluster.ssl.handshake"] > 0
    assert "URI=spiffe://cluster.local/ns/default/sa/sleep" in body, body
