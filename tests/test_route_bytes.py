"""Routes joined from a per-shape template and their destinations are exactly the bytes of
the route built as one message (translators.routes.route_body against
http_route_template), for any rule, in any order within one view: rules of the same
shape share a template, so a wrong template key shows up as another rule's bytes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos import virtual_service_pb2 as vs_pb2
from tests.helpers import config_from, plain_service_yaml
from translators.naming import outbound_cluster
from translators.route_match import is_catch_all, route_match
from translators.routes import (
    RouteContext,
    _default_route,
    _VHost,
    claim_domains,
    claim_each,
    default_route,
    http_route_bytes,
    http_route_template,
    route_body,
)
from translators.snapshot import World

HOSTS = ("reviews", "ratings", "details", "outside.example.com")
HASHED = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}
"""
TWO_PORTS = """apiVersion: v1
kind: Service
metadata: {name: details}
spec:
  selector: {app: details}
  ports: [{name: http, port: 9080}, {name: http-admin, port: 9090}]
"""
WORLD = World(config_from(plain_service_yaml("reviews", "ratings"), TWO_PORTS, HASHED), ())


def _context() -> RouteContext:
    return RouteContext(WORLD.services, WORLD.destination_rules, "default", {"app": "x"})


names = st.sampled_from(["", "a", "route-1"])
percent = st.builds(vs_pb2.Percent, value=st.sampled_from([0.0, 5.0, 100.0]))


@st.composite
def destinations(draw) -> vs_pb2.HTTPRouteDestination:
    dest = vs_pb2.HTTPRouteDestination(weight=draw(st.integers(0, 100)))
    dest.destination.host = draw(st.sampled_from(HOSTS))
    dest.destination.subset = draw(st.sampled_from(["", "v1", "v2"]))
    dest.destination.port.number = draw(st.sampled_from([0, 0, 9080, 9090]))
    if draw(st.integers(0, 5)) == 0:
        dest.headers.request.set["x-dest"] = "1"
        if draw(st.booleans()):
            dest.headers.request.set[":authority"] = "rewritten"
    return dest


@st.composite
def rules(draw) -> vs_pb2.HTTPRoute:
    rule = vs_pb2.HTTPRoute(name=draw(names))
    for _ in range(draw(st.integers(0, 2))):
        match = rule.match.add(name=draw(names))
        if draw(st.booleans()):
            match.headers["end-user"].exact = draw(st.sampled_from(["jason", "kim"]))
        if draw(st.booleans()):
            match.uri.prefix = draw(st.sampled_from(["/", "/api"]))
        match.stat_prefix = draw(st.sampled_from(["", "stats"]))
    action = draw(st.sampled_from(["route"] * 6 + ["redirect", "direct", "none"]))
    if action == "redirect":
        rule.redirect.uri = "/elsewhere"
    elif action == "direct":
        rule.direct_response.status = 418
    if action != "none":
        rule.route.extend(draw(st.lists(destinations(), min_size=1, max_size=3)))
    if draw(st.booleans()):
        rule.timeout.seconds = draw(st.integers(0, 3))
    retries = draw(st.sampled_from([None, 0, 3]))
    if retries is not None:
        rule.retries.attempts = retries
        rule.retries.retry_on = "5xx,503"
    if draw(st.booleans()):
        rule.fault.abort.http_status = 503
        rule.fault.abort.percentage.CopyFrom(draw(percent))
    if draw(st.booleans()):
        rule.cors_policy.allow_methods.append("GET")
    if draw(st.booleans()):
        rule.headers.request.set["x-mesh"] = "1"
        if draw(st.booleans()):
            rule.headers.request.set[":authority"] = "from-rule"
    if draw(st.booleans()):
        rule.mirror.host = draw(st.sampled_from(HOSTS))
        if draw(st.booleans()):
            rule.mirror_percentage.CopyFrom(draw(percent))
    if draw(st.booleans()):
        rule.rewrite.uri = "/v2"
        if draw(st.booleans()):
            rule.rewrite.authority = "rewritten-by-rule"
    return rule


def _as_message(
    rule: vs_pb2.HTTPRoute, namespace: str, ctx: RouteContext, port: int | None
) -> list[bytes]:
    """The routes of a rule built as messages: a template per match entry, named and
    matched, up to the first catch-all."""
    out = []
    for match in list(rule.match) or [None]:
        route = http_route_template(rule, namespace, ctx, port)
        route.name = rule.name
        if match is not None:
            if match.name:
                route.name = f"{rule.name}.{match.name}" if rule.name else match.name
            route.stat_prefix = match.stat_prefix
        route.match.CopyFrom(route_match(match))
        out.append(route.SerializeToString(deterministic=True))
        if is_catch_all(match):
            break
    return out


def _whole(rule: vs_pb2.HTTPRoute, namespace: str, ctx: RouteContext, port: int | None) -> bytes:
    return http_route_template(rule, namespace, ctx, port).SerializeToString(deterministic=True)


@st.composite
def views(draw) -> list[tuple[vs_pb2.HTTPRoute, str, int | None]]:
    """Rules as one view meets them: a few shapes, each with several sets of
    destinations, VirtualService namespaces and listener ports."""
    shapes = draw(st.lists(rules(), min_size=1, max_size=3))
    cases = []
    for _ in range(draw(st.integers(1, 10))):
        rule = vs_pb2.HTTPRoute()
        rule.CopyFrom(draw(st.sampled_from(shapes)))
        if rule.route:
            del rule.route[:]
            rule.route.extend(draw(st.lists(destinations(), min_size=1, max_size=3)))
        namespace = draw(st.sampled_from(["default", "other"]))
        cases.append((rule, namespace, draw(st.sampled_from([None, 9080]))))
    return cases


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(views())
def test_a_route_from_its_template_is_the_route_built_whole(cases) -> None:
    ctx = _context()  # one view for all: templates are shared between the rules
    for rule, namespace, port in cases:
        joined = b"".join(route_body(rule, namespace, ctx, port))
        assert joined == _whole(rule, namespace, ctx, port), rule
        assert http_route_bytes([rule], namespace, ctx, port) == _as_message(
            rule, namespace, ctx, port
        ), rule


def test_same_shaped_rules_share_a_template_and_keep_their_destinations() -> None:
    ctx = _context()
    first, second = vs_pb2.HTTPRoute(), vs_pb2.HTTPRoute()
    first.route.add().destination.host = "reviews"
    second.route.add().destination.host = "details"
    second.route[0].destination.port.number = 9090
    for rule in (first, second):
        assert b"".join(route_body(rule, "default", ctx, None)) == _whole(
            rule, "default", ctx, None
        )
    assert len(ctx._templates) == 1


def test_a_default_route_is_the_route_built_whole() -> None:
    ctx = _context()
    for host in ("reviews.default.svc.cluster.local", "ratings.default.svc.cluster.local"):
        whole = _default_route(outbound_cluster(9080, host), ctx.consistent_hash(host, "", 9080))
        assert default_route(host, 9080, ctx) == whole.SerializeToString(deterministic=True)


domain_forms = st.lists(
    st.tuples(st.integers(0, 1), st.sampled_from(["a", "a.", "b", "b:80", "c", "c.ns", "d"])),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["v1", "v2", "v3", "v4"]), domain_forms), max_size=6))
def test_claiming_all_domains_at_once_is_claiming_them_one_by_one(wanted) -> None:
    vhosts = [_VHost(name, [], domains) for name, domains in wanted]
    at_once, one_by_one = set(), set()
    assert claim_domains(vhosts, at_once) == claim_each(
        list({v.name: v for v in reversed(vhosts)}.values())[::-1], one_by_one
    )
    assert at_once == one_by_one
