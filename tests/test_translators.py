"""Translators on typed input, asserting the Envoy messages (Istio's names and defaults)."""

from __future__ import annotations

from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from tests.helpers import config_from, service_yaml, sidecar
from translators import model
from translators.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from translators.routes import DEFAULT_RETRY_ON
from translators.snapshot import World, translate

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed"
HOST = "reviews.default.svc.cluster.local"
CALLER = sidecar("caller", "caller")
WORKLOADS = (
    sidecar("r1", "reviews", "v1", ip="127.0.0.2"),
    sidecar("r2", "reviews", "v2", ip="127.0.0.3", inbound=16000),
    CALLER,
)


def unpack(resources, type_url, name, message_type):
    message = message_type()
    resources[type_url][name].any.Unpack(message)
    return message


def routes_for(*texts, proxy=CALLER) -> route_pb2.RouteConfiguration:
    world = World(config_from(service_yaml("reviews"), *texts), WORKLOADS)
    return unpack(translate(world, proxy), ROUTE, "http_proxy", route_pb2.RouteConfiguration)


def vhost(config: route_pb2.RouteConfiguration, name: str):
    return next(v for v in config.virtual_hosts if v.name == name)


def test_cluster_names_subsets_and_defaults():
    world = World(config_from(service_yaml("reviews")), WORKLOADS)
    res = translate(world, CALLER)
    assert set(res[CLUSTER]) == {
        f"outbound|9080||{HOST}",
        f"outbound|9080|v1|{HOST}",
        f"outbound|9080|v2|{HOST}",
        f"outbound|9080|v3|{HOST}",
        "inbound|9080||",
        "PassthroughCluster",
    }
    cluster = unpack(res, CLUSTER, f"outbound|9080|v1|{HOST}", cluster_pb2.Cluster)
    assert cluster.type == cluster_pb2.Cluster.EDS
    assert cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert cluster.connect_timeout.seconds == 10
    assert cluster.circuit_breakers.thresholds[0].max_requests.value == 4294967295


def test_subset_endpoints_are_the_sidecars_inbound_ports():
    res = translate(World(config_from(service_yaml("reviews")), WORKLOADS), CALLER)
    v2 = unpack(res, ENDPOINT, f"outbound|9080|v2|{HOST}", endpoint_pb2.ClusterLoadAssignment)
    (endpoint,) = v2.endpoints[0].lb_endpoints
    assert endpoint.endpoint.address.socket_address.address == "127.0.0.3"
    assert endpoint.endpoint.address.socket_address.port_value == 16000
    everything = unpack(res, ENDPOINT, f"outbound|9080||{HOST}", endpoint_pb2.ClusterLoadAssignment)
    assert len(everything.endpoints[0].lb_endpoints) == 2
    v3 = unpack(res, ENDPOINT, f"outbound|9080|v3|{HOST}", endpoint_pb2.ClusterLoadAssignment)
    assert not v3.endpoints  # exists, empty: the cluster does not wait for it


def test_default_route_without_virtual_service():
    config = routes_for()
    host = vhost(config, f"{HOST}:9080")
    assert {"reviews", "reviews:9080", "reviews.default", HOST, f"{HOST}:9080"} <= set(host.domains)
    (route,) = host.routes
    assert route.route.cluster == f"outbound|9080||{HOST}"
    assert route.route.timeout.seconds == 0 and route.route.timeout.nanos == 0
    assert route.route.retry_policy.retry_on == DEFAULT_RETRY_ON
    assert route.route.retry_policy.num_retries.value == 2
    assert config.validate_clusters.value is False


def test_seed_01_header_match_then_weights():
    config = routes_for((SEED / "01-traffic-split-reviews.yaml").read_text())
    first, second = vhost(config, f"{HOST}:9080").routes
    assert first.match.headers[0].name == "end-user"
    assert first.match.headers[0].string_match.exact == "jason"
    assert first.route.cluster == f"outbound|9080|v2|{HOST}"
    weights = [(c.name, c.weight.value) for c in second.route.weighted_clusters.clusters]
    assert weights == [(f"outbound|9080|v1|{HOST}", 75), (f"outbound|9080|v2|{HOST}", 25)]


def test_seed_06_cookie_regex_query_and_order():
    config = routes_for((SEED / "06-content-routing-reviews.yaml").read_text())
    cookie, query, rest = vhost(config, f"{HOST}:9080").routes
    assert cookie.match.headers[0].string_match.safe_regex.regex == "^(.*?;)?(user=jason)(;.*)?$"
    assert query.match.query_parameters[0].name == "test"
    assert query.match.query_parameters[0].string_match.exact == "true"
    assert rest.route.cluster == f"outbound|9080|v1|{HOST}"


def test_routes_stop_after_catch_all_and_match_expansion():
    vs = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /a}}, {method: {exact: POST}}, {headers: {x: {}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v3}}]
"""
    routes = vhost(routes_for(vs), f"{HOST}:9080").routes
    assert len(routes) == 4  # three matches, one catch-all; the last rule is unreachable
    assert routes[0].match.prefix == "/a"
    assert routes[1].match.headers[0].name == ":method"
    assert routes[2].match.headers[0].present_match
    assert routes[3].route.cluster.endswith("|v1|" + HOST)


def test_source_labels_are_a_config_time_filter():
    vs = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: caller}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""
    mine = vhost(routes_for(vs), f"{HOST}:9080").routes
    other = vhost(routes_for(vs, proxy=sidecar("x", "other")), f"{HOST}:9080").routes
    assert mine[0].route.cluster.endswith("|v2|" + HOST)
    assert [r.route.cluster for r in other] == [f"outbound|9080|v1|{HOST}"]


def test_other_namespace_gets_no_bare_short_name():
    other = sidecar("o", "o", namespace="prod")
    world = World(config_from(service_yaml("reviews")), (*WORKLOADS, other))
    config = unpack(translate(world, other), ROUTE, "http_proxy", route_pb2.RouteConfiguration)
    domains = set(vhost(config, f"{HOST}:9080").domains)
    assert "reviews.default" in domains and "reviews" not in domains


def test_domains_are_unique_across_virtual_hosts():
    two_ports = """apiVersion: v1
kind: Service
metadata: {name: multi}
spec:
  selector: {app: multi}
  ports: [{name: http, port: 8080}, {name: http-admin, port: 80}]
"""
    config = routes_for(two_ports)
    all_domains = [d for v in config.virtual_hosts for d in v.domains]
    assert len(all_domains) == len(set(all_domains))
    assert "multi" in vhost(config, "multi.default.svc.cluster.local:80").domains
    assert "multi:8080" in vhost(config, "multi.default.svc.cluster.local:8080").domains


def test_listeners_outbound_and_inbound():
    res = translate(World(config_from(service_yaml("reviews")), WORKLOADS), WORKLOADS[1])
    assert set(res[LISTENER]) == {"127.0.0.1_15001", "127.0.0.3_16000"}
    inbound = unpack(res, LISTENER, "127.0.0.3_16000", listener_pb2.Listener)
    assert inbound.address.socket_address.port_value == 16000
    cluster = unpack(res, CLUSTER, "inbound|9080||", cluster_pb2.Cluster)
    socket = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (socket.address, socket.port_value) == ("127.0.0.3", 9080)


def test_dns_service_entry_is_strict_dns_with_inline_endpoints():
    se = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"""
    world = World(config_from(se), (CALLER,))
    cluster = unpack(
        translate(world, CALLER), CLUSTER, "outbound|80||api.example.com", cluster_pb2.Cluster
    )
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.socket_address.address == "api.example.com"


def test_destination_rule_lb_and_subset_override():
    dr = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: a, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
  - {name: b, labels: {version: v2}}
"""
    svc = service_yaml("ratings").split("---")[0]
    world = World(config_from(svc, dr), (CALLER,))
    res = translate(world, CALLER)
    host = "ratings.default.svc.cluster.local"
    lb = {
        n: unpack(res, CLUSTER, n, cluster_pb2.Cluster).lb_policy
        for n in (f"outbound|9080||{host}", f"outbound|9080|a|{host}", f"outbound|9080|b|{host}")
    }
    assert list(lb.values()) == [
        cluster_pb2.Cluster.ROUND_ROBIN,
        cluster_pb2.Cluster.RANDOM,
        cluster_pb2.Cluster.ROUND_ROBIN,
    ]


def test_translation_is_deterministic():
    config = config_from(service_yaml("reviews", "ratings"))
    a = translate(World(config, WORKLOADS), CALLER)
    b = translate(World(config, tuple(reversed(WORKLOADS))), CALLER)
    assert {t: {n: p.hash for n, p in r.items()} for t, r in a.items()} == {
        t: {n: p.hash for n, p in r.items()} for t, r in b.items()
    }
    assert model.MeshConfig().version == model.MeshConfig().version
