"""Seed examples 01, 05, 06 and 19 through real Envoy: requests land where the YAML says.

Weighted splits are checked against a tolerance of about 4.5 standard deviations of the
binomial share for the number of requests sent, so a correct mesh fails < 1 in 100,000 runs.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.e2e


def share(seen, served_by: str) -> float:
    total = sum(seen.values())
    return seen[(200, served_by)] / total


def tolerance(p: float, n: int) -> float:
    return 4.5 * math.sqrt(p * (1 - p) / n)


def assert_split(mesh, host: str, n: int, versions: set[str], measured: str, p: float):
    """n requests to `host` land only on `versions`, with `measured` taking share p."""
    seen = mesh.send(n, host)
    assert set(seen) <= {(200, v) for v in versions}, seen
    assert abs(share(seen, measured) - p) < tolerance(p, n), seen


def test_seed_01_traffic_split_reviews(mesh):
    mesh.apply_seed("vs-reviews.yaml", "01-traffic-split-reviews.yaml")
    jason = mesh.send(50, "reviews", headers={"end-user": "jason"})
    assert jason == {(200, "reviews-v2"): 50}
    assert_split(mesh, "reviews:9080", 600, {"reviews-v1", "reviews-v2"}, "reviews-v1", 0.75)


def test_seed_05_canary_helloworld(mesh):
    mesh.apply_seed("vs-helloworld.yaml", "05-canary-helloworld.yaml")
    assert mesh.send(30, "helloworld", headers={"canary": "true"}) == {(200, "helloworld-v2"): 30}
    versions = {"helloworld-v1", "helloworld-v2"}
    host = "helloworld.default.svc.cluster.local"
    assert_split(mesh, host, 800, versions, "helloworld-v2", 0.10)


def test_seed_06_content_routing_reviews(mesh):
    mesh.apply_seed("vs-reviews.yaml", "06-content-routing-reviews.yaml")
    assert mesh.send(20, "reviews", headers={"cookie": "user=jason"}) == {(200, "reviews-v3"): 20}
    assert mesh.send(20, "reviews", headers={"cookie": "theme=dark;user=jason;lang=en"}) == {
        (200, "reviews-v3"): 20
    }
    assert mesh.send(20, "reviews", path="/?test=true") == {(200, "reviews-v2"): 20}
    assert mesh.send(20, "reviews", path="/?test=false") == {(200, "reviews-v1"): 20}
    assert mesh.send(20, "reviews", headers={"cookie": "user=jasonx"}) == {(200, "reviews-v1"): 20}
    # Rules are tried in order: the cookie rule wins over the query rule.
    assert mesh.send(10, "reviews", path="/?test=true", headers={"cookie": "user=jason"}) == {
        (200, "reviews-v3"): 10
    }


def test_seed_19_canary_my_app(mesh):
    mesh.apply_seed("vs-my-app.yaml", "19-exercise-canary-my-app.yaml")
    assert mesh.send(30, "my-app", headers={"x-canary": "true"}) == {(200, "my-app-v2"): 30}
    assert mesh.send(30, "my-app", headers={"x-canary": "false"})[(200, "my-app-v2")] < 30
    assert_split(mesh, "my-app:9080", 800, {"my-app-v1", "my-app-v2"}, "my-app-v2", 0.10)


def test_service_without_virtual_service_reaches_every_version(mesh):
    mesh.local.config_dir.joinpath("vs-reviews.yaml").unlink(missing_ok=True)
    mesh.apply("empty.yaml", "# nothing\n")
    seen = mesh.send(150, "reviews")
    assert {who for _, who in seen} == {"reviews-v1", "reviews-v2", "reviews-v3"}
    assert all(status == 200 for status, _ in seen)
