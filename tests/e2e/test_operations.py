"""Operating the mesh through real Envoys: the control plane's /metrics (istiod's names)
move as proxies connect, edits are pushed and ACKed, and Envoy rejects a config; the
operator's commands answer from the running server."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import plain_service_yaml
from xds_server.launcher import LocalMesh, Workload, wait_until

pytestmark = pytest.mark.e2e

ROUTE = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-pass: {exact: "N"}}}]
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
"""
# RE2 refuses this program size in Envoy; this mesh's server skips the check.
BAD_REGEX = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-regex}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {regex: 'a{97}'}}]
    route: [{destination: {host: ratings}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("operations")
    config = root / "config"
    config.mkdir()
    (config / "services.yaml").write_text(plain_service_yaml("reviews", "ratings"))
    workloads = [
        Workload("caller", "caller", app_port=None),
        Workload("reviews-v1", "reviews"),
        Workload("ratings-v1", "ratings"),
        Workload("ingress", "istio-ingressgateway", app_port=None, role="gateway"),
    ]
    local = LocalMesh(
        config,
        workloads,
        root / "work",
        server_env={"XDS_SERVER_UNSAFE_SKIP_CHECKS": "re2-program-size"},
    )
    with local:
        wait_until(local.all_synced, 30, "every proxy to sync")
        yield local


def scrape(mesh: LocalMesh) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"{mesh.debug_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and all(dict(found).get(k) == v for k, v in labels.items())
    )


def apply(mesh: LocalMesh, name: str, text: str) -> None:
    path = mesh.config_dir / name
    path.write_text(text)
    mesh.wait_config_applied({str(path): hashlib.sha256(text.encode()).hexdigest()})


def test_metrics_move_as_the_mesh_works(mesh) -> None:
    before = scrape(mesh)
    assert total(before, "pilot_xds") == 4  # three sidecars and a gateway
    assert total(before, "process_resident_memory_bytes") > 0
    apply(mesh, "route.yaml", ROUTE)
    # The three sidecars get the new route and ACK it (the gateway's config is the same).
    wait_until(
        lambda: (
            total(scrape(mesh), "pilot_proxy_convergence_time_count")
            >= total(before, "pilot_proxy_convergence_time_count") + 3
        ),
        15,
        "the sidecars to converge on the edit",
    )
    after = scrape(mesh)
    assert total(after, "pilot_xds_pushes", type="rds") > total(
        before, "pilot_xds_pushes", type="rds"
    )
    assert total(after, "pilot_xds_config_size_bytes_sum") > total(
        before, "pilot_xds_config_size_bytes_sum"
    )
    assert total(after, "xds_server_push_seconds_count") > total(
        before, "xds_server_push_seconds_count"
    )
    assert total(after, "pilot_total_xds_rejects") == 0
    # Envoy refuses the next config: the rejects count it, and the file is named.
    (mesh.config_dir / "bad.yaml").write_text(BAD_REGEX)
    wait_until(lambda: total(scrape(mesh), "pilot_total_xds_rejects") > 0, 30, "Envoy to reject it")
    wait_until(
        lambda: total(scrape(mesh), "xds_server_config_issues", severity="error") >= 1,
        15,
        "the rejected file to be counted",
    )
    (mesh.config_dir / "bad.yaml").unlink()


def run_cli(mesh: LocalMesh, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xds_server", *args, "--server", mesh.debug_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
