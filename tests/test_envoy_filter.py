"""EnvoyFilter: Istio's order and contexts, the operations on each object, and the
checks at load that keep what Envoy would refuse out of its configuration."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.helpers import config_from, sidecar
from translators import model
from translators.resources import CLUSTER, LISTENER, ROUTE
from translators.snapshot import Translator, World
from xds_server.config.loader import parse_file

SERVICES = """apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
"""
BUFFER = (
    "{name: envoy.filters.http.buffer, typed_config: {'@type': type.googleapis.com/"
    "envoy.extensions.filters.http.buffer.v3.Buffer, max_request_bytes: %d}}"
)


def envoy_filter(name: str, patches: str, namespace: str = "default", extra: str = "") -> str:
    return (
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{extra}"
        f"  configPatches:\n{patches}"
    )


def http_filter(
    operation: str, value: str, context: str = "SIDECAR_OUTBOUND", sub: str = ""
) -> str:
    sub_filter = f", subFilter: {{name: {sub}}}" if sub else ""
    return (
        "  - applyTo: HTTP_FILTER\n"
        f"    match: {{context: {context}, listener: {{filterChain: {{filter: "
        f"{{name: envoy.filters.network.http_connection_manager{sub_filter}}}}}}}}}\n"
        f"    patch: {{operation: {operation}, value: {value}}}\n"
    )


def translate(proxy: model.Proxy, *texts: str) -> dict:
    config = config_from(SERVICES, *texts)
    return Translator(World(config, (proxy,))).translate(proxy)


def http_filters(resources: dict, direction: int) -> list[list[str]]:
    """The HTTP filter names of each connection manager on listeners of `direction`."""
    out = []
    for packed in resources[LISTENER].values():
        listener = listener_pb2.Listener.FromString(packed.value)
        if listener.traffic_direction != direction:
            continue
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.name == "envoy.filters.network.http_connection_manager":
                    hcm = hcm_pb2.HttpConnectionManager()
                    f.typed_config.Unpack(hcm)
                    out.append([h.name for h in hcm.http_filters])
    return out


OUTBOUND, INBOUND = 2, 1


def test_priority_then_root_namespace_decide_the_order() -> None:
    first = envoy_filter(
        "a-late",
        http_filter("INSERT_FIRST", BUFFER % 1),
        extra="  priority: 10\n",
    )
    second = envoy_filter(
        "z-early",
        http_filter("INSERT_FIRST", BUFFER % 2).replace("buffer,", "buffer2,"),
        namespace="istio-system",
        extra="  priority: -1\n",
    ).replace("envoy.filters.http.buffer2", "early.buffer")
    resources = translate(sidecar("reviews-v1", "reviews"), first, second)
    (chain,) = http_filters(resources, OUTBOUND)
    # The early one (priority -1) inserted first; the later one went in front of it.
    assert chain[:2] == ["envoy.filters.http.buffer", "early.buffer"]


def test_context_and_selector_choose_the_listeners_and_workloads() -> None:
    patch = envoy_filter(
        "inbound-buffer",
        http_filter("INSERT_BEFORE", BUFFER % 5, "SIDECAR_INBOUND", "envoy.filters.http.router"),
        extra="  workloadSelector: {labels: {app: reviews}}\n",
    )
    reviews = translate(sidecar("reviews-v1", "reviews"), patch)
    for chain in http_filters(reviews, INBOUND):
        assert chain[-2:] == ["envoy.filters.http.buffer", "envoy.filters.http.router"]
    assert all("envoy.filters.http.buffer" not in c for c in http_filters(reviews, OUTBOUND))
    ratings = translate(sidecar("ratings-v1", "ratings"), patch)
    assert all("envoy.filters.http.buffer" not in c for c in http_filters(ratings, INBOUND))


def test_remove_replace_and_merge_of_http_filters() -> None:
    patches = http_filter("REMOVE", "{}", sub="envoy.filters.http.cors").replace(
        ", value: {}", ""
    ) + http_filter(
        "MERGE",
        "{typed_config: {'@type': type.googleapis.com/"
        "envoy.extensions.filters.http.router.v3.Router, suppress_envoy_headers: true}}",
        sub="envoy.filters.http.router",
    )
    resources = translate(sidecar("reviews-v1", "reviews"), envoy_filter("f", patches))
    (chain,) = http_filters(resources, OUTBOUND)
    assert "envoy.filters.http.cors" not in chain and "envoy.filters.http.fault" in chain
    (outbound,) = [p for p in resources[LISTENER].values() if p.name.endswith("_15001")]
    assert _router(outbound).suppress_envoy_headers


def _router(packed):
    from envoy.extensions.filters.http.router.v3 import router_pb2

    listener = listener_pb2.Listener.FromString(packed.value)
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    router = router_pb2.Router()
    hcm.http_filters[-1].typed_config.Unpack(router)
    return router


def test_cluster_merge_remove_and_add() -> None:
    patches = """  - applyTo: CLUSTER
    match: {cluster: {service: reviews.default.svc.cluster.local}}
    patch: {operation: MERGE, value: {connect_timeout: 3s}}
  - applyTo: CLUSTER
    match: {cluster: {name: "outbound|9080||ratings.default.svc.cluster.local"}}
    patch: {operation: REMOVE}
  - applyTo: CLUSTER
    match: {context: ANY}
    patch:
      operation: ADD
      value: {name: extra, type: STATIC, connect_timeout: 1s}
"""
    resources = translate(sidecar("caller", "caller"), envoy_filter("c", patches))
    clusters = {
        name: cluster_pb2.Cluster.FromString(p.value) for name, p in resources[CLUSTER].items()
    }
    assert clusters["outbound|9080||reviews.default.svc.cluster.local"].connect_timeout.seconds == 3
    assert "outbound|9080||ratings.default.svc.cluster.local" not in clusters
    assert "extra" in clusters


def test_virtual_host_and_route_patches() -> None:
    patches = """  - applyTo: VIRTUAL_HOST
    match: {routeConfiguration: {vhost: {name: "ratings.default.svc.cluster.local:9080"}}}
    patch: {operation: REMOVE}
  - applyTo: HTTP_ROUTE
    match:
      routeConfiguration:
        vhost:
          name: "reviews.default.svc.cluster.local:9080"
          route: {name: default}
    patch:
      operation: INSERT_BEFORE
      value: {name: teapot, match: {prefix: /tea}, direct_response: {status: 418}}
"""
    resources = translate(sidecar("caller", "caller"), envoy_filter("r", patches))
    (packed,) = resources[ROUTE].values()
    config = route_pb2.RouteConfiguration.FromString(packed.value)
    vhosts = {v.name: v for v in config.virtual_hosts}
    assert "ratings.default.svc.cluster.local:9080" not in vhosts
    routes = vhosts["reviews.default.svc.cluster.local:9080"].routes
    assert [r.name for r in routes] == ["teapot", "default"]


@pytest.mark.parametrize(
    ("patches", "field", "words"),
    [
        (http_filter("ADD", BUFFER % 1), "patch.operation", "after the router"),
        (
            "  - applyTo: BOOTSTRAP\n    patch: {operation: MERGE, value: {}}\n",
            "applyTo",
            "not supported yet",
        ),
        (
            "  - applyTo: CLUSTER\n    match: {listener: {portNumber: 80}}\n"
            "    patch: {operation: MERGE, value: {connect_timeout: 1s}}\n",
            "match.listener",
            "match a cluster",
        ),
        (
            "  - applyTo: CLUSTER\n    patch: {operation: MERGE, value: {conect_timeout: 1s}}\n",
            "patch.value",
            "conect_timeout",
        ),
        (
            http_filter(
                "INSERT_FIRST",
                "{name: x, typed_config: {'@type': type.googleapis.com/no.such.Type}}",
            ),
            "patch.value",
            "not a type Envoy 1.40 has",
        ),
        (
            "  - applyTo: ROUTE_CONFIGURATION\n    patch: {operation: REMOVE}\n",
            "patch.operation",
            "does not apply",
        ),
        ("  - applyTo: CLUSTER\n    patch: {operation: MERGE}\n", "patch.value", "required"),
    ],
)
def test_bad_patches_are_errors_at_their_line(patches: str, field: str, words: str) -> None:
    parsed = parse_file("ef.yaml", envoy_filter("bad", patches))
    errors = [i for i in parsed.issues if i.severity == "error"]
    assert len(errors) == 1, [str(e) for e in parsed.issues]
    assert errors[0].field.endswith(field) and words in errors[0].message, str(errors[0])
    assert errors[0].line >= 6


def captured(mtls: bool = True) -> model.Proxy:
    return model.Proxy(
        "reviews-cap",
        labels={"app": "reviews", "version": "v1"},
        ip="10.0.0.5",
        bind_address="0.0.0.0",
        ports=(model.WorkloadPort(9080, 9080),),
        interception="REDIRECT",
        mtls=mtls,
    )


def listeners(resources: dict) -> dict[str, listener_pb2.Listener]:
    return {n: listener_pb2.Listener.FromString(p.value) for n, p in resources[LISTENER].items()}


def test_a_listener_patch_compares_the_listener_s_own_port() -> None:
    """On virtualInbound, portNumber picks chains for patches below the listener; a
    LISTENER patch with portNumber 9080 does not touch the 15006 listener (Istio)."""
    patch = (
        "  - applyTo: LISTENER\n"
        "    match: {context: SIDECAR_INBOUND, listener: {portNumber: 9080}}\n"
        "    patch: {operation: REMOVE}\n"
    )
    assert "virtualInbound" in listeners(translate(captured(), envoy_filter("l", patch)))


def test_a_tls_merge_keeps_the_certificates() -> None:
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    patch = """  - applyTo: FILTER_CHAIN
    match:
      context: SIDECAR_INBOUND
      listener: {portNumber: 9080, filterChain: {transportProtocol: tls}}
    patch:
      operation: MERGE
      value:
        transport_socket:
          name: envoy.transport_sockets.tls
          typed_config:
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.\
DownstreamTlsContext"
            common_tls_context: {tls_params: {tls_minimum_protocol_version: TLSv1_3}}
"""
    inbound = listeners(translate(captured(), envoy_filter("t", patch)))["virtualInbound"]
    (chain,) = [
        c
        for c in inbound.filter_chains
        if c.filter_chain_match.transport_protocol == "tls"
        and c.filter_chain_match.destination_port.value == 9080
    ]
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    assert context.common_tls_context.tls_params.tls_minimum_protocol_version == 4  # TLSv1_3
    assert context.common_tls_context.tls_certificate_sds_secret_configs  # kept
    assert context.require_client_certificate.value


def test_inbound_adds_and_the_default_chain() -> None:
    patches = """  - applyTo: CLUSTER
    match: {context: SIDECAR_INBOUND}
    patch: {operation: ADD, value: {name: extra-in, type: STATIC, connect_timeout: 1s}}
  - applyTo: NETWORK_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        name: virtualOutbound
        filterChain: {filter: {name: envoy.filters.network.tcp_proxy}}
    patch:
      operation: MERGE
      value:
        name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          idle_timeout: 77s
"""
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    resources = translate(captured(), envoy_filter("a", patches))
    assert "extra-in" in resources[CLUSTER]
    outbound = listeners(resources)["virtualOutbound"]
    proxy = tcp_proxy_pb2.TcpProxy()
    outbound.default_filter_chain.filters[0].typed_config.Unpack(proxy)
    assert proxy.idle_timeout.seconds == 77


def test_a_merge_envoy_would_refuse_leaves_the_resource_as_it_was(caplog) -> None:
    """A MERGE value can be fine alone and wrong once merged (a transport socket without
    a name): the result is checked as a whole, and a broken one is not sent."""
    patch = """  - applyTo: CLUSTER
    match: {cluster: {service: reviews.default.svc.cluster.local}}
    patch:
      operation: MERGE
      value:
        connect_timeout: 2s
        transport_socket:
          typed_config:
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.\
UpstreamTlsContext"
            sni: reviews
"""
    resources = translate(sidecar("caller", "caller"), envoy_filter("m", patch))
    cluster = cluster_pb2.Cluster.FromString(
        resources[CLUSTER]["outbound|9080||reviews.default.svc.cluster.local"].value
    )
    assert cluster.connect_timeout.seconds == 10 and not cluster.HasField("transport_socket")
    assert "transport_socket.name" in caplog.text


def test_everything_translated_holds_envoy_s_field_rules() -> None:
    """No false alarms from the field rules that guard EnvoyFilter results: every seed's
    and the demo's translation passes them."""
    from envoy.config.cluster.v3 import cluster_pb2 as c

    from tests.golden_cases import _proxies, cases
    from translators.proto_rules import problems

    kinds = {
        CLUSTER: c.Cluster,
        LISTENER: listener_pb2.Listener,
        ROUTE: route_pb2.RouteConfiguration,
    }
    proxies = _proxies()
    for name, config in cases().items():
        translator = Translator(World(config, tuple(p for p in proxies if p.ports)))
        for proxy in proxies:
            for type_url, message_type in kinds.items():
                for packed in translator.translate(proxy).get(type_url, {}).values():
                    found = problems(message_type.FromString(packed.value))
                    assert not found, (name, proxy.node_id, packed.name, found)
