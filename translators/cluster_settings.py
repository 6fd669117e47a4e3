"""A DestinationRule traffic policy applied to one Envoy Cluster (Istio §4.3–4.6).

Istio writes 0 and "unset" the same way for integer limits: both mean "keep the default",
which for circuit breakers is MaxUint32 rather than Envoy's 1024.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

from protos import destination_rule_pb2 as dr_pb2
from translators.resources import to_any
from translators.services import ServicePort

HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DEFAULT_RING_SIZE = 1024

Cluster = cluster_pb2.Cluster
_LB = dr_pb2.LoadBalancerSettings
_SIMPLE = {
    _LB.UNSPECIFIED: Cluster.LEAST_REQUEST,
    _LB.LEAST_CONN: Cluster.LEAST_REQUEST,
    _LB.LEAST_REQUEST: Cluster.LEAST_REQUEST,
    _LB.ROUND_ROBIN: Cluster.ROUND_ROBIN,
    _LB.RANDOM: Cluster.RANDOM,
}
_H2_POLICY = dr_pb2.ConnectionPoolSettings.HTTPSettings


def apply_load_balancer(cluster: Cluster, lb: dr_pb2.LoadBalancerSettings) -> None:
    """Simple policies map one to one; consistent hashing needs RING_HASH or MAGLEV here
    and a hash_policy on the route (routes.py)."""
    if not lb.HasField("consistent_hash"):
        cluster.lb_policy = _SIMPLE[lb.simple]
        return
    hashing = lb.consistent_hash
    if hashing.HasField("maglev"):
        cluster.lb_policy = Cluster.MAGLEV
        if hashing.maglev.table_size:
            cluster.maglev_lb_config.table_size.value = hashing.maglev.table_size
        return
    cluster.lb_policy = Cluster.RING_HASH
    if hashing.HasField("ring_hash"):
        size = hashing.ring_hash.minimum_ring_size
    else:
        size = hashing.minimum_ring_size or DEFAULT_RING_SIZE
    if size:
        cluster.ring_hash_lb_config.minimum_ring_size.value = size


def apply_connection_limits(cluster: Cluster, pool: dr_pb2.ConnectionPoolSettings) -> None:
    """Circuit breakers, connect timeout and TCP keepalive."""
    limits = cluster.circuit_breakers.thresholds[0]
    for value, target in (
        (pool.tcp.max_connections, limits.max_connections),
        (pool.http.http1_max_pending_requests, limits.max_pending_requests),
        (pool.http.http2_max_requests, limits.max_requests),
        (pool.http.max_retries, limits.max_retries),
    ):
        if value > 0:
            target.value = value
    if pool.tcp.HasField("connect_timeout"):
        cluster.connect_timeout.CopyFrom(pool.tcp.connect_timeout)
    if pool.tcp.HasField("tcp_keepalive"):
        keepalive = pool.tcp.tcp_keepalive
        out = cluster.upstream_connection_options.tcp_keepalive
        out.SetInParent()
        if keepalive.probes:
            out.keepalive_probes.value = keepalive.probes
        if keepalive.HasField("time"):
            out.keepalive_time.value = max(1, keepalive.time.seconds)
        if keepalive.HasField("interval"):
            out.keepalive_interval.value = max(1, keepalive.interval.seconds)


def http_protocol_options(
    pool: dr_pb2.ConnectionPoolSettings, port: ServicePort
) -> hpo_pb2.HttpProtocolOptions | None:
    """The upstream HTTP options this port needs, or None when Envoy's defaults do."""
    http, tcp = pool.http, pool.tcp
    options = hpo_pb2.HttpProtocolOptions()
    common = options.common_http_protocol_options
    if http.max_requests_per_connection > 0:
        common.max_requests_per_connection.value = http.max_requests_per_connection
    if http.HasField("idle_timeout"):
        common.idle_timeout.CopyFrom(http.idle_timeout)
    elif tcp.HasField("idle_timeout"):
        common.idle_timeout.CopyFrom(tcp.idle_timeout)
    if tcp.HasField("max_connection_duration"):
        common.max_connection_duration.CopyFrom(tcp.max_connection_duration)
    upgrade = port.is_http and http.h2_upgrade_policy == _H2_POLICY.UPGRADE
    if http.use_client_protocol:
        downstream = options.use_downstream_protocol_config
        downstream.http_protocol_options.SetInParent()
        downstream.http2_protocol_options.SetInParent()
    elif port.is_h2 or upgrade:
        h2 = options.explicit_http_config.http2_protocol_options
        h2.SetInParent()
        if http.max_concurrent_streams > 0:
            h2.max_concurrent_streams.value = http.max_concurrent_streams
    elif options.HasField("common_http_protocol_options"):
        # Envoy requires a protocol choice once the options exist.
        options.explicit_http_config.http_protocol_options.CopyFrom(
            protocol_pb2.Http1ProtocolOptions()
        )
    else:
        return None
    return options


def apply_http_options(
    cluster: Cluster, pool: dr_pb2.ConnectionPoolSettings, port: ServicePort
) -> None:
    options = http_protocol_options(pool, port)
    if options is not None:
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(to_any(options))


def apply_outlier_detection(cluster: Cluster, outlier: dr_pb2.OutlierDetection) -> None:
    """Istio disables success-rate ejection and panic mode (minHealthPercent, default 0).

    The deprecated `consecutiveErrors` is applied the way Istio 1.0–1.6 did (gateway
    errors only) when neither of its replacements is set: current Istio drops it with a
    warning, which silently disables what users of the classic circuit-breaking examples
    expect. Validation warns about the deprecation either way."""
    out = cluster.outlier_detection
    out.enforcing_success_rate.value = 0
    if outlier.HasField("consecutive_5xx_errors"):
        count = outlier.consecutive_5xx_errors.value
        out.consecutive_5xx.value = count
        out.enforcing_consecutive_5xx.value = 100 if count else 0
    if outlier.HasField("consecutive_gateway_errors"):
        count = outlier.consecutive_gateway_errors.value
        out.consecutive_gateway_failure.value = count
        out.enforcing_consecutive_gateway_failure.value = 100 if count else 0
    legacy = not (
        outlier.HasField("consecutive_5xx_errors") or outlier.HasField("consecutive_gateway_errors")
    )
    if legacy and outlier.consecutive_errors > 0:
        out.consecutive_gateway_failure.value = outlier.consecutive_errors
        out.enforcing_consecutive_gateway_failure.value = 100
        out.enforcing_consecutive_5xx.value = 0
    if outlier.HasField("interval"):
        out.interval.CopyFrom(outlier.interval)
    if outlier.HasField("base_ejection_time"):
        out.base_ejection_time.CopyFrom(outlier.base_ejection_time)
    if outlier.max_ejection_percent > 0:
        out.max_ejection_percent.value = outlier.max_ejection_percent
    if outlier.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        out.enforcing_local_origin_success_rate.value = 0
        if outlier.consecutive_local_origin_failures > 0:
            out.consecutive_local_origin_failure.value = outlier.consecutive_local_origin_failures
            out.enforcing_consecutive_local_origin_failure.value = 100
    cluster.common_lb_config.healthy_panic_threshold.value = max(0, outlier.min_health_percent)


def apply_traffic_policy(cluster: Cluster, policy: dr_pb2.TrafficPolicy, port: ServicePort) -> None:
    """Everything a resolved (port- and subset-merged) policy says about this cluster."""
    apply_load_balancer(cluster, policy.load_balancer)
    apply_connection_limits(cluster, policy.connection_pool)
    if port.is_http:
        apply_http_options(cluster, policy.connection_pool, port)
    if policy.HasField("outlier_detection"):
        apply_outlier_detection(cluster, policy.outlier_detection)
