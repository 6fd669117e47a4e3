"""Route-level seeds through real Envoy: retries (11), fault injection (12), SMI
TrafficSplit (07) and Linkerd ServiceProfile (08)."""

from __future__ import annotations

import collections
import math
import uuid

import pytest

from tests.e2e.test_seed_routing import assert_split
from xds_server.launcher import wait_until

pytestmark = pytest.mark.e2e

RATINGS = "ratings.default.svc.cluster.local"


def key() -> dict[str, str]:
    return {"x-request-key": uuid.uuid4().hex}


def test_seed_11_retries(mesh):
    mesh.apply_seed("vs-ratings.yaml", "11-retries-ratings.yaml")
    # An upstream that fails twice (503 is a gateway error) then succeeds: the caller sees
    # 200, and the upstream saw 3 attempts.
    reply = mesh.request("ratings", headers={"x-fail-first": "2", **key()})
    assert reply.status == 200, reply.body
    assert reply.json["attempt"] == 3
    # Three retries at most: a fourth failure reaches the caller.
    reply = mesh.request("ratings", headers={"x-fail-first": "4", **key()})
    assert reply.status == 503 and reply.json["attempt"] == 4
    # 500 is not in retryOn: no retry.
    reply = mesh.request("ratings", headers={"x-fail-first": "1", "x-status": "500", **key()})
    assert reply.status == 500 and reply.json["attempt"] == 1
    # perTryTimeout (2s) cuts a slow first try; the retry answers.
    slow = {"x-slow-first": "1", "x-delay-ms": "4000", **key()}
    reply = mesh.request("ratings", headers=slow)
    assert reply.status == 200 and reply.json["attempt"] == 2
    stats = mesh.local.envoy_stats("caller", r"upstream_rq_per_try_timeout$")
    assert sum(int(v) for k, v in stats.items() if "ratings" in k) >= 1, stats


def within(count: int, n: int, p: float) -> bool:
    """`count` of `n` is within 4.5 standard deviations of the binomial mean n*p."""
    return abs(count - n * p) <= 4.5 * math.sqrt(n * p * (1 - p))


DELAYS_INJECTED = "http.outbound_.*.fault.delays_injected"


def test_seed_12_fault_injection(mesh):
    mesh.apply_seed("vs-ratings.yaml", "12-fault-injection-ratings.yaml")
    served_before = mesh.app("ratings-v1", "/admin/count")["served"]
    delays_before = mesh.stat("caller", DELAYS_INJECTED)
    n = 400
    replies = mesh.request_many(n, "ratings", workers=80)
    aborted = [r for r in replies if r.status == 500]
    delayed = mesh.stat("caller", DELAYS_INJECTED) - delays_before
    assert {r.status for r in replies} <= {200, 500}
    assert within(len(aborted), n, 0.10), len(aborted)
    assert within(delayed, n, 0.10), delayed
    # Aborted requests never reached ratings; the proxy answered them.
    assert all("fault filter abort" in r.body for r in aborted)
    served = mesh.app("ratings-v1", "/admin/count")["served"] - served_before
    assert served == n - len(aborted)
    print(f"fault injection: {len(aborted)}/{n} aborted, {delayed}/{n} delayed")


def test_seed_07_smi_traffic_split(mesh):
    # The apex Service selects only web-svc-v1: everything goes there until the split.
    assert mesh.send(20, "web-svc") == {(200, "web-svc-v1-v1"): 20}
    mesh.apply_seed("trafficsplit.yaml", "07-smi-trafficsplit.yaml")
    versions = {"web-svc-v1-v1", "web-svc-v2-v1"}
    assert_split(mesh, "web-svc", 600, versions, "web-svc-v2-v1", 0.5)


PROFILE_WITH_SHORT_TIMES = {"timeout: 30s": "timeout: 1s"}


def test_seed_08_service_profile(mesh):
    mesh.apply_seed("serviceprofile.yaml", "08-serviceprofile-webapp.yaml")
    routes = mesh.envoy_config("caller", "dynamic_route_configs")
    (vhost,) = [
        v
        for entry in routes
        for v in entry["route_config"]["virtual_hosts"]
        if v["name"].startswith("webapp.default.svc.cluster.local:")
    ]
    by_name = {r["name"]: r for r in vhost["routes"]}
    assert by_name["POST"]["route"]["timeout"] == "30s"
    assert by_name["POST"]["match"]["safe_regex"]["regex"] == "/api"
    assert by_name["GET"]["route"]["timeout"] == "10s"  # Linkerd's default
    cluster = mesh.cluster("caller", "outbound|9080||webapp.default.svc.cluster.local")
    budget = cluster["circuit_breakers"]["thresholds"][0]["retry_budget"]
    assert budget == {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 10}

    # The route timeout fires (the seed's 30s, shortened for the test).
    mesh.apply_seed(
        "serviceprofile.yaml", "08-serviceprofile-webapp.yaml", **PROFILE_WITH_SHORT_TIMES
    )
    slow = mesh.request("webapp", path="/api", method="POST", headers={"x-delay-ms": "3000"})
    assert (slow.status, slow.body) == (504, "upstream request timeout")
    assert mesh.request("webapp", path="/api", method="POST").status == 200
    # GET / is not retryable in the seed: a failure is not retried.
    reply = mesh.request("webapp", headers={"x-fail-first": "1", **key()})
    assert reply.status == 503 and reply.json["attempt"] == 1


RETRYABLE_PROFILE = """apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  name: webapp.default.svc.cluster.local
spec:
  routes:
  - name: GET
    condition: {method: GET, pathRegex: "/.*"}
    isRetryable: true
  retryBudget:
    retryRatio: 0.2
    minRetriesPerSecond: 1
    ttl: 10s
"""


def test_service_profile_retries_stay_within_the_budget(mesh):
    mesh.apply("serviceprofile.yaml", RETRYABLE_PROFILE)
    reply = mesh.request("webapp", headers={"x-fail-first": "1", **key()})
    assert reply.status == 200 and reply.json["attempt"] == 2  # retryable: retried
    # 30 concurrent requests that always fail: without a budget each would be retried 3
    # times; the budget allows 20% of active requests (at least 1) to be retrying.
    cluster = "cluster.outbound|9080||webapp.default.svc.cluster.local"
    overflow_before = mesh.stat("caller", f"{cluster}.upstream_rq_retry_overflow")
    retries_before = mesh.stat("caller", f"{cluster}.upstream_rq_retry")
    replies = mesh.request_many(
        30, "webapp", workers=30, headers={"x-status": "503", "x-delay-ms": "300"}
    )
    assert collections.Counter(r.status for r in replies) == {503: 30}
    overflow = mesh.stat("caller", f"{cluster}.upstream_rq_retry_overflow") - overflow_before
    retries = mesh.stat("caller", f"{cluster}.upstream_rq_retry") - retries_before
    assert overflow > 0 and retries < 30 * 3, (overflow, retries)
    mesh.remove("serviceprofile.yaml")


HTTP_FEATURES = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: my-app-features}
spec:
  hosts: [my-app]
  http:
  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - name: teapot
    match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - name: main
    match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /v2/}
    headers:
      request:
        set: {x-mesh: "yes"}
        remove: [x-secret]
      response:
        add: {x-route: main}
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example.com"}]
      allowMethods: [GET, POST]
      maxAge: 1h
    mirror: {host: my-app, subset: v2}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: my-app, subset: v1}}]
"""


def test_redirect_direct_response_rewrite_headers_cors_and_mirror(mesh):
    mesh.apply("vs-my-app-features.yaml", HTTP_FEATURES)
    try:
        moved = mesh.request("my-app", path="/old/page")
        assert (moved.status, moved.headers["location"]) == (302, "http://my-app/new")
        teapot = mesh.request("my-app", path="/teapot")
        assert (teapot.status, teapot.body) == (418, "short and stout")

        mirrored_before = mesh.app("my-app-v2", "/admin/count")["served"]
        reply = mesh.request("my-app", path="/api/items", headers={"x-secret": "s"})
        assert reply.status == 200 and reply.headers["x-served-by"] == "my-app-v1"
        seen = reply.json
        assert seen["path"] == "/v2/items"  # the prefix rewrite
        assert seen["headers"]["x-mesh"] == "yes" and "x-secret" not in seen["headers"]
        assert reply.headers["x-route"] == "main"
        # The mirror got a copy (fire and forget: wait for it, bounded).
        wait_until(
            lambda: mesh.app("my-app-v2", "/admin/count")["served"] > mirrored_before,
            10,
            "the mirrored request",
        )

        preflight = mesh.request(
            "my-app",
            path="/api/items",
            method="OPTIONS",
            headers={
                "origin": "https://shop.example.com",
                "access-control-request-method": "POST",
            },
        )
        assert preflight.headers["access-control-allow-origin"] == "https://shop.example.com"
        assert preflight.headers["access-control-max-age"] == "3600"
        other = mesh.request(
            "my-app",
            path="/api/items",
            method="OPTIONS",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert "access-control-allow-origin" not in other.headers
    finally:
        mesh.remove("vs-my-app-features.yaml")
