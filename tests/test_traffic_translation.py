"""Traffic-management translation on typed input: every VirtualService and DestinationRule
field as istiod would write it (reference/istio-mapping.md §2, §4), plus SMI/Linkerd."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2
from envoy.type.v3 import percent_pb2

from tests.helpers import config_from, plain_service_yaml, sidecar
from translators.resources import CLUSTER, ROUTE
from translators.snapshot import World, translate, translate_many

HOST = "reviews.default.svc.cluster.local"
CALLER = sidecar("caller", "caller")
WORKLOADS = (sidecar("r1", "reviews", "v1", ip="127.0.0.2"), CALLER)
OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def translated(*texts, services=None):
    config = config_from(services or plain_service_yaml("reviews"), *texts)
    return translate(World(config, WORKLOADS), CALLER)


def cluster(res, name) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster()
    res[CLUSTER][name].any.Unpack(out)
    return out


def vhost_routes(res, name=f"{HOST}:9080"):
    config = route_pb2.RouteConfiguration()
    res[ROUTE]["http_proxy"].any.Unpack(config)
    return list(next(v for v in config.virtual_hosts if v.name == name).routes)


def vs(http: str, hosts: str = "[reviews]") -> str:
    return f"""apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: {hosts}
  http:
{http}"""


def dr(policy: str, subsets: str = "") -> str:
    return f"""apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: reviews-policy}}
spec:
  host: reviews
  trafficPolicy:
{policy}
{subsets}"""


# ---- retries -----------------------------------------------------------------------------


def test_retry_on_codes_become_retriable_status_codes():
    res = translated(
        vs(
            "  - retries: {attempts: 4, perTryTimeout: 250ms, retryOn: 'gateway-error, 503,"
            " reset', retryRemoteLocalities: true}\n    route: [{destination: {host: reviews}}]"
        )
    )
    (route,) = vhost_routes(res)
    policy = route.route.retry_policy
    assert policy.num_retries.value == 4
    assert policy.retry_on == "gateway-error,reset,retriable-status-codes"
    assert list(policy.retriable_status_codes) == [503]
    assert policy.per_try_timeout.ToMilliseconds() == 250
    assert policy.host_selection_retry_max_attempts == 5
    assert policy.retry_priority.name == "envoy.retry_priorities.previous_priorities"


def test_retries_block_without_attempts_disables_retries():
    res = translated(vs("  - retries: {retryOn: 5xx}\n    route: [{destination: {host: reviews}}]"))
    (route,) = vhost_routes(res)
    assert not route.route.HasField("retry_policy")


def test_consistent_hash_drops_previous_hosts_and_adds_hash_policy():
    res = translated(
        dr("    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}"),
        vs("  - route: [{destination: {host: reviews}}]"),
    )
    (route,) = vhost_routes(res)
    assert [h.header.header_name for h in route.route.hash_policy] == ["x-user"]
    assert not route.route.retry_policy.retry_host_predicate
    assert cluster(res, f"outbound|9080||{HOST}").lb_policy == cluster_pb2.Cluster.RING_HASH


# ---- fault, mirror, headers, CORS, rewrite, redirect, direct response -------------------


def test_fault_percentages_are_per_million_and_grpc_status_is_numeric():
    res = translated(
        vs(
            "  - fault:\n      delay: {fixedDelay: 5s, percentage: {value: 12.5}}\n"
            "      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.1}}\n"
            "    route: [{destination: {host: reviews}}]"
        )
    )
    (route,) = vhost_routes(res)
    fault = fault_pb2.HTTPFault()
    route.typed_per_filter_config["envoy.filters.http.fault"].Unpack(fault)
    assert fault.delay.fixed_delay.seconds == 5
    assert (fault.delay.percentage.numerator, fault.delay.percentage.denominator) == (
        125000,
        percent_pb2.FractionalPercent.MILLION,
    )
    assert fault.abort.grpc_status == 14 and fault.abort.percentage.numerator == 1000


def test_mirror_headers_cors_and_rewrite():
    res = translated(
        vs(
            "  - mirror: {host: reviews, subset: v2}\n"
            "    mirrorPercentage: {value: 50}\n"
            "    headers:\n"
            "      request: {set: {x-b: '1', x-a: '2', ':authority': new.example}, remove: [x-c]}\n"
            "      response: {add: {x-d: '3'}}\n"
            "    corsPolicy:\n"
            "      allowOrigins: [{exact: 'https://a.example'}, {regex: 'https://.*\\.b'}]\n"
            "      allowMethods: [GET, POST]\n"
            "      maxAge: 24h\n"
            "      allowCredentials: false\n"
            "    rewrite: {uri: /v2/}\n"
            "    route: [{destination: {host: reviews}}]"
        )
    )
    (route,) = vhost_routes(res)
    (mirror,) = route.route.request_mirror_policies
    assert mirror.cluster == f"outbound|9080|v2|{HOST}"
    assert mirror.runtime_fraction.default_value.numerator == 500000
    assert [h.header.key for h in route.request_headers_to_add] == ["x-a", "x-b"]
    assert route.route.host_rewrite_literal == "new.example"
    assert list(route.request_headers_to_remove) == ["x-c"]
    assert route.response_headers_to_add[0].append_action == 0  # APPEND_IF_EXISTS_OR_ADD
    assert route.route.prefix_rewrite == "/v2/"
    cors = cors_pb2.CorsPolicy()
    route.typed_per_filter_config["envoy.filters.http.cors"].Unpack(cors)
    assert cors.allow_methods == "GET,POST" and cors.max_age == "86400"
    assert cors.allow_origin_string_match[1].safe_regex.regex == "https://.*\\.b"
    assert cors.allow_credentials.value is False and cors.HasField("allow_credentials")


def test_redirect_drops_default_ports_and_direct_response_has_a_body():
    res = translated(
        vs(
            "  - match: [{uri: {prefix: /old}}]\n"
            "    redirect: {uri: /new, authority: b.example, scheme: https, port: 443,"
            " redirectCode: 308}\n"
            "  - directResponse: {status: 418, body: {string: teapot}}"
        )
    )
    redirect, direct = vhost_routes(res)
    assert redirect.redirect.path_redirect == "/new" and redirect.redirect.port_redirect == 0
    assert redirect.redirect.response_code == route_components_pb2.RedirectAction.PERMANENT_REDIRECT
    assert direct.direct_response.status == 418
    assert direct.direct_response.body.inline_string == "teapot"


def test_route_with_timeout_has_no_max_stream_duration():
    res = translated(vs("  - timeout: 3s\n    route: [{destination: {host: reviews}}]"))
    (route,) = vhost_routes(res)
    assert route.route.timeout.seconds == 3
    assert not route.route.HasField("max_stream_duration")


# ---- DestinationRule -> Cluster ----------------------------------------------------------


def test_outlier_detection_as_istio_writes_it():
    res = translated(
        dr(
            "    outlierDetection:\n      consecutive5xxErrors: 0\n"
            "      consecutiveGatewayErrors: 2\n      interval: 5s\n      minHealthPercent: 30"
        )
    )
    out = cluster(res, f"outbound|9080||{HOST}")
    od = out.outlier_detection
    assert od.enforcing_success_rate.value == 0 and od.HasField("enforcing_success_rate")
    assert (od.consecutive_5xx.value, od.enforcing_consecutive_5xx.value) == (0, 0)
    assert (
        od.consecutive_gateway_failure.value,
        od.enforcing_consecutive_gateway_failure.value,
    ) == (
        2,
        100,
    )
    assert out.common_lb_config.healthy_panic_threshold.value == 30


def test_connection_pool_limits_keepalive_and_protocol_options():
    res = translated(
        dr(
            "    connectionPool:\n"
            "      tcp: {maxConnections: 7, connectTimeout: 2s,"
            " tcpKeepalive: {probes: 3, time: 60s}}\n"
            "      http: {http2MaxRequests: 9, maxRetries: 4, idleTimeout: 30s,"
            " maxRequestsPerConnection: 2}"
        )
    )
    out = cluster(res, f"outbound|9080||{HOST}")
    limits = out.circuit_breakers.thresholds[0]
    assert (limits.max_connections.value, limits.max_requests.value) == (7, 9)
    assert limits.max_retries.value == 4 and limits.max_pending_requests.value == 4294967295
    assert out.connect_timeout.seconds == 2
    assert out.upstream_connection_options.tcp_keepalive.keepalive_probes.value == 3
    options = hpo_pb2.HttpProtocolOptions()
    out.typed_extension_protocol_options[OPTIONS].Unpack(options)
    assert options.common_http_protocol_options.idle_timeout.seconds == 30
    assert options.common_http_protocol_options.max_requests_per_connection.value == 2
    assert options.explicit_http_config.HasField("http_protocol_options")


def test_port_level_settings_replace_and_subset_merges_block_by_block():
    res = translated(
        dr(
            "    loadBalancer: {simple: RANDOM}\n"
            "    connectionPool: {tcp: {maxConnections: 5}}\n"
            "    portLevelSettings:\n"
            "    - port: {number: 9080}\n"
            "      loadBalancer: {simple: ROUND_ROBIN}",
            "  subsets:\n  - name: v1\n    labels: {version: v1}\n"
            "    trafficPolicy: {connectionPool: {http: {http2MaxRequests: 3}}}",
        )
    )
    parent = cluster(res, f"outbound|9080||{HOST}")
    # The port entry replaces loadBalancer *and* connectionPool (unset there: defaults).
    assert parent.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert parent.circuit_breakers.thresholds[0].max_connections.value == 4294967295
    subset = cluster(res, f"outbound|9080|v1|{HOST}")
    assert subset.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert subset.circuit_breakers.thresholds[0].max_requests.value == 3


def test_cookie_without_ttl_and_maglev():
    res = translated(
        dr("    loadBalancer:\n      consistentHash: {httpCookie: {name: c, path: /}, maglev: {}}"),
        vs("  - route: [{destination: {host: reviews}}]"),
    )
    assert cluster(res, f"outbound|9080||{HOST}").lb_policy == cluster_pb2.Cluster.MAGLEV
    (route,) = vhost_routes(res)
    assert route.route.hash_policy[0].cookie.name == "c"
    assert not route.route.hash_policy[0].cookie.HasField("ttl")  # no ttl: no cookie minted


# ---- outbound policy, ServiceEntry NONE, SMI and ServiceProfile -------------------------


def catch_all(res):
    config = route_pb2.RouteConfiguration()
    res[ROUTE]["http_proxy"].any.Unpack(config)
    return config.virtual_hosts[-1]


def test_catch_all_follows_the_mesh_outbound_policy():
    assert catch_all(translated()).routes[0].route.cluster == "PassthroughCluster"
    mesh = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
        "data:\n  mesh: |\n    outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"
    )
    blocked = catch_all(translated(mesh))
    assert blocked.name == "block_all" and blocked.routes[0].direct_response.status == 502


def test_service_entry_none_is_a_forward_proxy_cluster():
    se = (
        "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: ext}\n"
        "spec:\n  hosts: ['*.example.com']\n  ports: [{number: 80, name: http}]\n"
        "  resolution: NONE\n"
    )
    out = cluster(translated(se), "outbound|80||*.example.com")
    assert out.cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
    assert out.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED


def test_traffic_split_and_service_profile_share_one_vhost():
    services = plain_service_yaml("web", "web-v1", "web-v2")
    split = (
        "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s}\n"
        "spec:\n  service: web\n  backends:\n  - {service: web-v1, weight: 900}\n"
        "  - {service: web-v2, weight: 100}\n"
    )
    profile = (
        "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\n"
        "metadata: {name: web.default.svc.cluster.local}\nspec:\n  routes:\n"
        "  - name: api\n    condition: {method: get, pathRegex: '/api/.*'}\n"
        "    isRetryable: true\n    responseClasses:\n"
        "    - condition: {status: {min: 500, max: 502}}\n      isFailure: true\n"
        "    - condition: {status: {min: 503, max: 599}}\n      isFailure: false\n"
    )
    res = translated(split, profile, services=services)
    api, fallback = vhost_routes(res, "web.default.svc.cluster.local:9080")
    assert api.match.safe_regex.regex == "/api/.*"
    assert api.match.headers[0].string_match.exact == "GET"
    assert list(api.route.retry_policy.retriable_status_codes) == [500, 501, 502]
    weights = {c.name: c.weight.value for c in fallback.route.weighted_clusters.clusters}
    assert weights == {
        "outbound|9080||web-v1.default.svc.cluster.local": 900,
        "outbound|9080||web-v2.default.svc.cluster.local": 100,
    }
    assert fallback.route.timeout.seconds == 10  # Linkerd's default route timeout
    assert not fallback.route.HasField("retry_policy")


def test_a_namespace_with_its_own_rule_gets_its_own_routes():
    """Routes are shared between namespace views unless something differs for a view:
    here the other namespace's own DestinationRule adds hashing for its proxies only."""
    own_rule = (
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n"
        "metadata: {name: reviews-hash, namespace: other}\n"
        "spec:\n  host: reviews.default.svc.cluster.local\n"
        "  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n"
    )
    config = config_from(plain_service_yaml("reviews"), own_rule)
    elsewhere = sidecar("caller2", "caller", namespace="other")
    third = sidecar("caller3", "caller", namespace="third")
    out = translate_many(World(config, (*WORKLOADS, elsewhere, third)), [CALLER, elsewhere, third])
    hashed = {node: bool(vhost_routes(res)[0].route.hash_policy) for node, res in out.items()}
    assert hashed == {"caller": False, "caller2": True, "caller3": False}


def test_shared_routes_equal_a_cold_translation_per_proxy():
    """Sharing between views changes no byte: two Sidecars in one namespace import
    different hosts (the destination's port is inferred only where it is visible), a
    sourceNamespace match and a namespace's own rule, translated together and alone."""
    text = (
        plain_service_yaml("reviews")
        + "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: ratings}\n"
        "spec: {selector: {app: ratings}, ports: [{name: http, port: 7070}]}\n"
        "---\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n"
        "metadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n"
        "  - match: [{sourceNamespace: other}]\n    route: [{destination: {host: ratings}}]\n"
        "  - route: [{destination: {host: ratings}}]\n"
        "---\napiVersion: networking.istio.io/v1beta1\nkind: Sidecar\n"
        "metadata: {name: narrow}\nspec:\n  workloadSelector: {labels: {app: narrow}}\n"
        "  egress: [{hosts: ['./reviews.default.svc.cluster.local']}]\n"
        "---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n"
        "metadata: {name: hash, namespace: other}\n"
        "spec:\n  host: ratings.default.svc.cluster.local\n"
        "  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}\n"
    )
    proxies = [
        CALLER,
        sidecar("narrow", "narrow"),
        sidecar("o1", "caller", namespace="other"),
        sidecar("t1", "caller", namespace="third"),
    ]
    world = World(config_from(text), (*WORKLOADS, *proxies[1:]))
    together = translate_many(world, proxies)
    for proxy in proxies:
        alone = translate(World(config_from(text), (*WORKLOADS, *proxies[1:])), proxy)
        for type_url, resources in alone.items():
            assert {n: p.hash for n, p in resources.items()} == {
                n: p.hash for n, p in together[proxy.node_id][type_url].items()
            }, (proxy.node_id, type_url)
