"""Semantic validation of traffic resources: each error names file, line, resource, field."""

from __future__ import annotations

from pathlib import Path

from envoy.config.route.v3 import route_pb2

from tests.helpers import config_from, plain_service_yaml, service_yaml, sidecar
from translators.resources import ROUTE
from translators.snapshot import World, translate
from xds_server.config.loader import parse_file
from xds_server.config.store import ConfigStore


def found(text: str) -> dict[str, tuple[int, str]]:
    """field path -> (line, message) of every error in one file."""
    return {
        i.field: (i.line, i.message)
        for i in parse_file("f.yaml", text).issues
        if i.severity == "error"
    }


VS_BAD = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - timeout: 0s
    retries:
      attempts: 2
      perTryTimeout: 0s
      retryOn: 5xx,sometimes
    fault:
      abort:
        httpStatus: 700
        percentage: {value: 150}
    route:
    - destination: {host: ratings}
      weight: 101
    - destination: {host: ratings}
  - match:
    - uri: {regex: "(unclosed"}
    redirect: {uri: /x, redirectCode: 305}
    directResponse: {status: 200}
"""


def test_virtual_service_errors_point_at_their_lines():
    errors = found(VS_BAD)
    assert "spec.http[0].timeout" not in errors  # 0s disables the timeout
    assert errors["spec.http[0].retries.perTryTimeout"][0] == 10
    assert "at least 1ms" in errors["spec.http[0].retries.perTryTimeout"][1]
    assert errors["spec.http[0].retries.retryOn"][0] == 11
    assert '"sometimes"' in errors["spec.http[0].retries.retryOn"][1]
    assert errors["spec.http[0].fault.abort.httpStatus"][0] == 14
    assert errors["spec.http[0].fault.abort.percentage.value"][0] == 15
    assert errors["spec.http[0].route[0].weight"][0] == 18
    assert errors["spec.http[1].match[0].uri.regex"][0] == 21
    assert "RE2" in errors["spec.http[1].match[0].uri.regex"][1]
    assert errors["spec.http[1].redirect.redirectCode"][0] == 22
    assert errors["spec.http[1].redirect"][1] == "redirect and directResponse cannot both be set"


DR_BAD = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {ttl: 10s}
    connectionPool:
      tcp: {maxConnections: -1}
    outlierDetection:
      maxEjectionPercent: 120
      interval: 0s
    portLevelSettings:
    - port: {number: 70000}
  subsets:
  - name: v1
    trafficPolicy:
      loadBalancer: {simple: PASSTHROUGH}
  - name: v1
"""


def test_destination_rule_errors_point_at_their_lines():
    errors = found(DR_BAD)
    assert errors["spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name"][0] == 9
    assert errors["spec.trafficPolicy.connectionPool.tcp.maxConnections"][0] == 11
    assert errors["spec.trafficPolicy.outlierDetection.maxEjectionPercent"][0] == 13
    assert errors["spec.trafficPolicy.outlierDetection.interval"][0] == 14
    assert errors["spec.trafficPolicy.portLevelSettings[0].port.number"][0] == 16
    assert errors["spec.subsets[0].trafficPolicy.loadBalancer.simple"][0] == 20
    assert errors["spec.subsets[1].name"] == (21, 'duplicate subset name "v1"')


def test_gateway_sidecar_and_linkerd_errors():
    gateway = """apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: PASSTHROUGH, serverCertificate: /c.pem}
  - port: {number: 443, name: http, protocol: HTTP}
    hosts: [b.example.com]
"""
    errors = found(gateway)
    assert errors["spec.servers[0].tls.mode"][0] == 9
    assert "not supported yet" in errors["spec.servers[0].tls.mode"][1]
    assert "cannot share port 443" in errors["spec.servers[1].port.number"][1]
    sidecar = """apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - hosts: [reviews]
"""
    assert found(sidecar)["spec.egress[0].hosts[0]"][0] == 6
    profile = """apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web.default.svc.cluster.local}
spec:
  routes:
  - name: bad
    condition: {pathRegex: "a(b"}
"""
    assert found(profile)["spec.routes[0].condition.pathRegex"][0] == 7
    split = """apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: s}
spec:
  service: web
  backends:
  - {service: web-v1, weight: 0}
"""
    assert "must not all be 0" in found(split)["spec.backends"][1]


def test_unsupported_features_are_refused_not_ignored():
    tcp = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db]
  tcp:
  - route: [{destination: {host: db}}]
"""
    assert not found(tcp)
    subnets = tcp.replace(
        "  - route:", "  - match: [{destinationSubnets: [10.0.0.0/8]}]\n    route:"
    )
    assert "not supported" in found(subnets)["spec.tcp[0].match[0].destinationSubnets"][1]
    delegate = tcp.replace(
        "  tcp:\n  - route: [{destination: {host: db}}]", "  http:\n  - delegate: {name: other}"
    )
    assert "not supported" in found(delegate)["spec.http[0].delegate"][1]


UNKNOWN_SUBSET = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v9}
"""


def test_unknown_subset_is_an_error_naming_the_defined_ones(tmp_path: Path):
    (tmp_path / "services.yaml").write_text(service_yaml("reviews"))
    (tmp_path / "vs.yaml").write_text(UNKNOWN_SUBSET)
    store = ConfigStore(tmp_path)
    store.load_all()
    (issue,) = [i for i in store.all_issues() if i.severity == "error"]
    assert (issue.file.endswith("vs.yaml"), issue.line) == (True, 8)
    assert issue.field == "spec.http[0].route[0].destination.subset"
    assert "v1, v2, v3" in issue.message
    # The routes still apply (Istio answers 503 there); fixing the DR clears the error.
    assert store.snapshot.of_kind("VirtualService")


def test_two_virtual_services_for_one_host_warn_and_the_oldest_wins(tmp_path: Path):
    (tmp_path / "services.yaml").write_text(plain_service_yaml("reviews"))
    (tmp_path / "a.yaml").write_text(UNKNOWN_SUBSET.replace("subset: v9", "port: {number: 9080}"))
    (tmp_path / "b.yaml").write_text(
        UNKNOWN_SUBSET.replace("name: reviews}", "name: reviews-2}").replace(", subset: v9", "")
    )
    store = ConfigStore(tmp_path)
    store.load_all()
    warnings = [i for i in store.all_issues() if i.severity == "warning"]
    assert any(
        i.file.endswith("b.yaml")
        and "already routed by VirtualService default/reviews" in i.message
        for i in warnings
    ), [str(w) for w in warnings]


def test_two_tcp_services_on_one_port_warn(tmp_path: Path):
    tcp = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: %s}\n"
        "spec:\n  selector: {app: %s}\n  ports: [{name: tcp-db, port: 5432}]\n"
    )
    (tmp_path / "a.yaml").write_text(tcp % ("db-a", "db-a"))
    (tmp_path / "b.yaml").write_text(tcp % ("db-b", "db-b"))
    store = ConfigStore(tmp_path)
    store.load_all()
    (warning,) = [i for i in store.all_issues() if i.severity == "warning"]
    assert warning.file.endswith("b.yaml") and warning.field == "spec.ports[0]"
    assert "db-a.default.svc.cluster.local" in warning.message


def test_a_service_entry_port_used_twice_is_refused_and_never_reaches_envoy():
    text = (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\n"
        "spec:\n  hosts: [ext.example.com]\n  resolution: STATIC\n"
        "  endpoints: [{address: 127.0.0.1}]\n  ports:\n"
        "  - {number: 80, name: http, protocol: HTTP}\n"
        "  - {number: 80, name: http-alt, protocol: HTTP}\n"
    )
    assert found(text)["spec.ports[1].number"] == (10, "duplicate port 80 (also ports[0])")
    # The translator keeps one port per number whatever validation says: a second
    # virtual host of the same name would make every sidecar refuse its routes.
    parsed = parse_file("f.yaml", text)
    config = config_from(plain_service_yaml("reviews"))
    config = type(config)(resources=(*config.resources, *parsed.resources))
    routes = translate(World(config, ()), sidecar("c", "c"))[ROUTE]["http_proxy"]
    route_config = route_pb2.RouteConfiguration()
    routes.any.Unpack(route_config)
    names = [v.name for v in route_config.virtual_hosts]
    assert names.count("ext.example.com:80") == 1


def test_gateway_hosts_envoy_cannot_tell_apart_are_refused():
    server = (
        "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['%s']\n"
        "    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}\n"
    )
    text = (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\n"
        "spec:\n  selector: {istio: ingressgateway}\n  servers:\n"
        + server % "shop.example.com"
        + server % "Shop.example.com"
        + server % "a.*.com"
    )
    errors = found(text)
    assert "names match without case" in errors["spec.servers[1].hosts[0]"][1]
    assert "wildcard may only be" in errors["spec.servers[2].hosts[0]"][1]
