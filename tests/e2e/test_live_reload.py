"""Editing files while traffic flows: changes apply without failed requests, broken files
are reported and the last good configuration keeps serving."""

from __future__ import annotations

import threading
import time

import pytest

from xds_server.launcher import http_get, wait_until

pytestmark = pytest.mark.e2e

ALL_TO = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: %s
"""


class Traffic:
    """Requests in a loop from the caller's sidecar until stopped (bounded by `limit`)."""

    def __init__(self, mesh, limit: int = 20000) -> None:
        self.mesh, self.limit = mesh, limit
        self.results: list[tuple[float, int, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = self.mesh.connection()
        while not self._stop.is_set() and len(self.results) < self.limit:
            try:
                conn.request("GET", "/", headers={"Host": "reviews"})
                response = conn.getresponse()
                response.read()
                self.results.append(
                    (time.monotonic(), response.status, response.getheader("x-served-by") or "")
                )
            except OSError as exc:  # a broken connection is a failed request
                self.errors.append(repr(exc))
                conn.close()
                conn = self.mesh.connection()
        conn.close()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_for(self, served_by: str, since: float, timeout: float = 10.0) -> float:
        """Seconds from `since` until requests land only on `served_by`, checked over a run
        of 20 consecutive responses."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = [r for r in self.results if r[0] >= since]
            for i in range(len(recent) - 20):
                if all(who == served_by for _, _, who in recent[i : i + 20]):
                    return recent[i][0] - since
            time.sleep(0.02)
        raise AssertionError(f"traffic never moved to {served_by}")


def test_edit_while_requests_flow_changes_routing_without_failures(mesh):
    mesh.apply("vs-reviews.yaml", ALL_TO % "v1")
    with Traffic(mesh) as traffic:
        time.sleep(0.3)
        for target in ("reviews-v2", "reviews-v3", "reviews-v1"):
            started = time.monotonic()
            mesh.write("vs-reviews.yaml", ALL_TO % target.split("-")[1])
            took = traffic.wait_for(target, started)
            print(f"routing moved to {target} {took * 1000:.0f} ms after the edit")
        time.sleep(0.2)
    assert not traffic.errors
    statuses = {status for _, status, _ in traffic.results}
    assert statuses == {200}, f"failed requests during reload: {statuses}"
    assert len(traffic.results) > 100


def test_broken_file_is_reported_and_last_good_config_keeps_serving(mesh):
    mesh.apply("vs-reviews.yaml", ALL_TO % "v2")
    assert mesh.send(20, "reviews") == {(200, "reviews-v2"): 20}
    broken = (ALL_TO % "v3").replace("  hosts:\n  - reviews\n", "")
    name = mesh.write("vs-reviews.yaml", broken)

    def reported():
        issues = mesh.local.debug_json("/debug/configz")["issues"]
        return [i for i in issues if i["file"] == name and i["severity"] == "error"]

    (issue,) = wait_until(reported, 10, "the broken file to be reported")
    assert issue["line"] == 5 and issue["field"] == "spec.hosts"
    assert issue["resource"] == "VirtualService default/reviews"
    assert mesh.send(30, "reviews") == {(200, "reviews-v2"): 30}  # last good config serves
    mesh.apply("vs-reviews.yaml", ALL_TO % "v3")  # fixing the file resumes updates
    assert mesh.send(20, "reviews") == {(200, "reviews-v3"): 20}
    assert not reported()


def test_every_envoy_acked_everything(mesh):
    mesh.local.wait_config_applied({})
    for workload in mesh.local.workloads:
        stats = mesh.local.envoy_stats(workload.name, r"update_rejected$")
        assert stats and all(v == "0" for v in stats.values()), (workload.name, stats)
        connected = mesh.local.envoy_stats(workload.name, r"control_plane.connected_state")
        assert connected["control_plane.connected_state"] == "1"
    syncz = mesh.local.debug_json("/debug/syncz")
    assert len(syncz["proxies"]) == len(mesh.local.workloads)
    for proxy in syncz["proxies"]:
        # A gateway asks for routes only once a Gateway gives it a listener.
        expected = (
            {"CDS", "EDS", "LDS"} if proxy["proxy"] == "ingress" else {"CDS", "EDS", "LDS", "RDS"}
        )
        assert set(proxy["types"]) >= expected
        assert {t["status"] for t in proxy["types"].values()} == {"SYNCED"}, proxy
        assert all(t["nacks"] == 0 for t in proxy["types"].values())


def test_config_dump_shows_what_the_proxy_was_sent(mesh):
    dump = mesh.local.debug_json("/debug/config_dump?proxy=caller")
    types = [c["@type"].rsplit(".", 1)[-1] for c in dump["configs"]]
    assert types == [
        "ClustersConfigDump",
        "ListenersConfigDump",
        "RoutesConfigDump",
        "EndpointsConfigDump",
    ]
    clusters = [c["cluster"]["name"] for c in dump["configs"][0]["dynamic_active_clusters"]]
    assert "outbound|9080|v1|reviews.default.svc.cluster.local" in clusters
    route = dump["configs"][2]["dynamic_route_configs"][0]["route_config"]
    assert route["name"] == "http_proxy"
    status, _ = http_get(mesh.local.debug_url + "/debug/config_dump?proxy=nobody")
    assert status == 404
