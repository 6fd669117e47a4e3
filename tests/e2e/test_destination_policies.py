"""DestinationRule seeds 03, 04, 09, 10 and 20 through real Envoy.

Each test applies the seed (times shortened where the seed waits minutes), then checks
what Envoy was given (its own /config_dump) and what requests observe.
"""

from __future__ import annotations

import collections
import uuid

import pytest

from xds_server.launcher import wait_until

pytestmark = pytest.mark.e2e

MY_SERVICE = "my-service.default.svc.cluster.local"
HTTPBIN = "httpbin.default.svc.cluster.local"
MAX = 4294967295


def thresholds(cluster: dict) -> dict:
    return cluster["circuit_breakers"]["thresholds"][0]


def instances(replies) -> collections.Counter:
    return collections.Counter(r.headers.get("x-instance") for r in replies if r.status == 200)


def test_seed_03_destination_rule_productpage(mesh):
    """The subset keeps the parent's loadBalancer; its connectionPool replaces the parent's
    block as a whole (Istio merges subset policy block by block, not field by field), so
    it has 10 connections and the default pending limit and protocol."""
    mesh.apply_seed("dr-productpage.yaml", "03-destinationrule-productpage.yaml")
    host = "productpage.default.svc.cluster.local"
    parent = mesh.cluster("caller", f"outbound|9080||{host}")
    subset = mesh.cluster("caller", f"outbound|9080|v1|{host}")
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    assert parent["lb_policy"] == subset["lb_policy"] == "LEAST_REQUEST"
    assert thresholds(parent)["max_connections"] == 100
    assert thresholds(parent)["max_pending_requests"] == 100
    explicit = parent["typed_extension_protocol_options"][options]["explicit_http_config"]
    assert "http2_protocol_options" in explicit  # h2UpgradePolicy: UPGRADE
    assert thresholds(subset)["max_connections"] == 10
    assert thresholds(subset)["max_pending_requests"] == MAX
    assert options not in subset.get("typed_extension_protocol_options", {})
    # Requests flow, over HTTP/2 between the sidecars.
    replies = [mesh.request("productpage") for _ in range(10)]
    assert {r.status for r in replies} == {200}
    h2 = mesh.stat("caller", f"cluster.outbound|9080||{host}.upstream_cx_http2_total")
    assert h2 >= 1


def test_seed_09_round_robin(mesh):
    mesh.apply_seed("dr-my-service.yaml", "09-lb-round-robin.yaml")
    cluster = mesh.cluster("caller", f"outbound|9080||{MY_SERVICE}")
    assert cluster.get("lb_policy", "ROUND_ROBIN") == "ROUND_ROBIN"  # 0: omitted in JSON
    seen = instances(mesh.request("my-service") for _ in range(90))
    # Round robin over three endpoints: each gets a third, give or take one.
    assert len(seen) == 3 and max(seen.values()) - min(seen.values()) <= 2, seen


def test_seed_10_session_affinity(mesh):
    mesh.apply_seed("dr-my-service.yaml", "10-session-affinity.yaml")
    cluster = mesh.cluster("caller", f"outbound|9080||{MY_SERVICE}")
    assert cluster["lb_policy"] == "RING_HASH"
    assert cluster["ring_hash_lb_config"]["minimum_ring_size"] == "1024"
    first = mesh.request("my-service")
    assert first.status == 200
    cookie = first.headers.get("set-cookie", "")
    assert cookie.startswith("session-cookie=") and "Max-Age=3600" in cookie, cookie
    value = cookie.split(";")[0]
    sticky = instances(mesh.request("my-service", headers={"cookie": value}) for _ in range(30))
    assert sticky == {first.headers["x-instance"]: 30}
    # Different cookies spread over the endpoints (all 20 on one: chance 3 * 3^-20).
    spread = instances(
        mesh.request("my-service", headers={"cookie": f"session-cookie={uuid.uuid4().hex}"})
        for _ in range(20)
    )
    assert len(spread) > 1, spread


def eject(mesh, workload: str, host: str, cluster: str, status: int) -> str:
    """Make `workload`'s app answer `status` and send requests to `host` until the caller's
    Envoy reports an ejection in `cluster`; the app is healthy again on return. Returns
    the endpoint (ip:port), which an ejected host no longer is among responders."""
    active = f"cluster.{cluster}.outlier_detection.ejections_active"
    assert mesh.stat("caller", active) == 0
    mesh.app(workload, f"/admin/fail?status={status}")
    try:
        wait_until(
            lambda: mesh.request(host).status and mesh.stat("caller", active) == 1,
            15,
            f"{workload} to be ejected",
            interval=0.05,
        )
    finally:
        mesh.app(workload, "/admin/ok")
    return f"{mesh.local.workload(workload).ip}:9080"


def overflowed(replies) -> list:
    return [r for r in replies if r.status == 503 and r.headers.get("x-envoy-overloaded")]


def test_seed_20_circuit_breaking_and_ejection(mesh):
    # The seed's own times are 30s/1m; the same policy with short times for the test.
    mesh.apply_seed(
        "dr-my-service.yaml",
        "20-exercise-circuit-breaking.yaml",
        **{"interval: 30s": "interval: 200ms", "baseEjectionTime: 1m": "baseEjectionTime: 5s"},
    )
    cluster = mesh.cluster("caller", f"outbound|9080||{MY_SERVICE}")
    limits = thresholds(cluster)
    assert (limits["max_connections"], limits["max_pending_requests"]) == (10, 5)
    outlier = cluster["outlier_detection"]
    assert outlier["consecutive_gateway_failure"] == 3
    assert outlier["enforcing_consecutive_gateway_failure"] == 100
    assert outlier["max_ejection_percent"] == 50
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {}  # 0: panic off

    # Circuit breaking: 40 slow requests at once against 10 connections + 5 pending.
    name = f"outbound|9080||{MY_SERVICE}"
    before = mesh.stat("caller", f"cluster.{name}.upstream_rq_pending_overflow")
    replies = mesh.request_many(40, "my-service", workers=40, headers={"x-delay-ms": "500"})
    fast_503 = overflowed(replies)
    assert fast_503, collections.Counter(r.status for r in replies)
    assert {r.status for r in replies} <= {200, 503}
    after = mesh.stat("caller", f"cluster.{name}.upstream_rq_pending_overflow")
    assert after - before == len(fast_503)

    # Ejection: one endpoint fails three times in a row (503) and is ejected ...
    bad = eject(mesh, "my-service-a", "my-service", name, 503)
    assert bad not in instances(mesh.request("my-service") for _ in range(12))
    # ... and gets traffic again once the ejection time is over.
    wait_until(
        lambda: bad in instances(mesh.request("my-service") for _ in range(12)),
        20,
        "the endpoint to return after baseEjectionTime",
        interval=0.2,
    )


def test_seed_04_circuit_breaker_httpbin(mesh):
    mesh.apply_seed("dr-httpbin.yaml", "04-circuit-breaker-httpbin.yaml")
    name = f"outbound|9080||{HTTPBIN}"
    cluster = mesh.cluster("caller", name)
    limits = thresholds(cluster)
    assert (limits["max_connections"], limits["max_pending_requests"]) == (1, 1)
    assert limits["max_requests"] == MAX and limits["max_retries"] == MAX
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["common_http_protocol_options"]["max_requests_per_connection"] == 1
    assert cluster["outlier_detection"]["base_ejection_time"] == "180s"

    replies = mesh.request_many(20, "httpbin", workers=20, headers={"x-delay-ms": "300"})
    assert overflowed(replies), collections.Counter(r.status for r in replies)
    assert mesh.stat("caller", f"cluster.{name}.upstream_rq_pending_overflow") >= 1

    # One gateway error is enough to eject a host for the seed's 3 minutes.
    bad = eject(mesh, "httpbin-a", "httpbin", name, 502)
    assert bad not in instances(mesh.request("httpbin") for _ in range(10))
