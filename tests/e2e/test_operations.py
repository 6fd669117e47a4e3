"""Operating the mesh through real Envoys: the control plane's /metrics (istiod's names)
move as proxies connect, edits are pushed and ACKed, and Envoy rejects a config; the
operator's commands answer from the running server."""

from __future__ import annotations

import json
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


def test_metrics_move_as_the_mesh_works(mesh) -> None:
    before = scrape(mesh)
    assert total(before, "pilot_xds") == 4  # three sidecars and a gateway
    assert total(before, "process_resident_memory_bytes") > 0
    mesh.apply("route.yaml", ROUTE)
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


def test_proxy_status_lists_every_proxy_in_sync(mesh) -> None:
    wait_until(mesh.all_synced, 15, "every proxy to sync")
    done = run_cli(mesh, "proxy-status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:6] == ["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {
        "caller.default",
        "reviews-v1.default",
        "ratings-v1.default",
        "ingress.default",
    }
    for row in rows.values():
        assert row[2:5] == ["SYNCED"] * 3, row  # CDS, LDS, EDS
    one = run_cli(mesh, "proxy-status", "caller")
    assert "Clusters, listeners and routes match what was sent." in one.stdout, one.stdout


def test_a_rejection_shows_envoy_s_reason_and_the_file(mesh) -> None:
    path = mesh.config_dir / "bad-again.yaml"
    path.write_text(BAD_REGEX)
    try:

        def shown() -> str:
            out = run_cli(mesh, "proxy-status", "caller").stdout
            return out if "bad-again.yaml:" in out else ""

        out = wait_until(shown, 30, "the rejection and its file")
        rows = {line.split()[0]: line for line in run_cli(mesh, "proxy-status").stdout.splitlines()}
        assert "ERROR" in rows["caller.default"], rows  # while the file is held back
        assert "RDS: last rejected" in out and "Envoy:" in out
        assert "regex" in out.lower() or "RE2" in out
        assert "VirtualService default/ratings-regex" in out
        # The live server's analysis says it too.
        found = json.loads(
            urllib.request.urlopen(f"{mesh.debug_url}/debug/analyze", timeout=5).read()
        )
        assert any(
            m["code"] == "XDS0003" and m["file"].endswith("bad-again.yaml") for m in found
        ), found
    finally:
        path.unlink()


def test_proxy_config_tables_match_what_envoy_holds(mesh) -> None:
    held = json.loads(
        urllib.request.urlopen(
            f"http://{mesh.workload('caller').ip}:15000/config_dump", timeout=5
        ).read()
    )
    from xds_server.proxy_status import dynamic_resources

    resources = dynamic_resources(held)
    done = run_cli(mesh, "proxy-config", "clusters", "caller")
    assert done.returncode == 0, done.stderr
    names = set()
    for line in done.stdout.splitlines()[1:]:
        fqdn, port, subset, direction = line.split()[:4]
        if direction == "-":
            names.add(fqdn)
        else:
            names.add(f"{direction}|{port}|{'' if subset == '-' else subset}|{fqdn}")
    assert names == set(resources["clusters"])
    listeners = run_cli(mesh, "proxy-config", "listeners", "caller").stdout
    for listener in resources["listeners"].values():
        port = str(listener["address"]["socket_address"]["port_value"])
        assert any(line.split()[1:2] == [port] for line in listeners.splitlines()[1:])
    routes = run_cli(mesh, "proxy-config", "routes", "caller").stdout
    for config in resources["routes"].values():
        for vhost in config["virtual_hosts"]:
            assert vhost["name"] in routes
    only = run_cli(
        mesh, "proxy-config", "clusters", "caller", "--fqdn", "reviews.default.svc.cluster.local"
    ).stdout.splitlines()
    assert len(only) == 2 and only[1].startswith("reviews.default.svc.cluster.local")
    as_json = json.loads(run_cli(mesh, "proxy-config", "all", "caller", "-o", "json").stdout)
    assert dynamic_resources(as_json)["clusters"].keys() == resources["clusters"].keys()


def test_proxy_status_shows_what_a_paused_envoy_has_not_received(mesh) -> None:
    import os
    import signal

    from xds_server.proxy_status import diff, get_json

    admin = f"http://{mesh.workload('caller').ip}:15000"
    before = get_json(f"{admin}/config_dump")
    pid = mesh.processes["caller"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        edited = ROUTE.replace('exact: "N"', 'exact: "Y"')
        (mesh.config_dir / "route.yaml").write_text(edited)

        def stale() -> bool:
            syncz = get_json(f"{mesh.debug_url}/debug/syncz")
            caller = next(p for p in syncz["proxies"] if p["proxy"] == "caller")
            return caller["types"]["RDS"]["status"] == "STALE"

        wait_until(stale, 15, "the server to have sent what the paused Envoy lacks")
        out = run_cli(mesh, "proxy-status", "caller").stdout
        assert "RDS: STALE" in out and "cannot read the Envoy's config" in out
        sent = get_json(f"{mesh.debug_url}/debug/config_dump?proxy=caller")
        difference = diff(sent, before, "caller")
        assert '-          "exact": "Y"' in difference or '"exact": "Y"' in difference
        assert difference.startswith("--- caller (sent by xds-server)")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(
        lambda: "match what was sent" in run_cli(mesh, "proxy-status", "caller").stdout,
        20,
        "the Envoy to catch up",
    )


def test_the_tables_name_the_yaml_behind_each_resource(mesh) -> None:
    rule = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: ratings}\nspec:\n  host: ratings\n"
        "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}\n"
    )
    mesh.apply("rule.yaml", rule)
    clusters = run_cli(mesh, "proxy-config", "clusters", "caller").stdout.splitlines()
    (ratings,) = [line for line in clusters if line.startswith("ratings.default")]
    assert ratings.split()[-1] == "default/ratings"
    routes = run_cli(mesh, "proxy-config", "routes", "caller").stdout.splitlines()
    reviews = [line for line in routes if "reviews.default.svc.cluster.local:9080" in line]
    assert len(reviews) == 2  # route.yaml's VirtualService has two rules
    assert {line.split()[-1] for line in reviews} == {"default/reviews"}
    sources = json.loads(
        urllib.request.urlopen(f"{mesh.debug_url}/debug/provenance?proxy=caller", timeout=5).read()
    )
    cluster = sources["clusters"]["outbound|9080||ratings.default.svc.cluster.local"]
    assert any(
        s.startswith("DestinationRule default/ratings (") and "rule.yaml:" in s for s in cluster
    ), cluster
