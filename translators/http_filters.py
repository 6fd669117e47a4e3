"""HTTP filter chains of our HTTP connection managers (Istio §2.12, stock-Envoy subset).

Fault and CORS filters sit in every chain with empty configs, as in Istio: a route's
typed_per_filter_config switches them on for that route only. The outbound chain also has
the dynamic forward proxy filter, which resolves the Host of requests routed to the
PassthroughCluster (ALLOW_ANY and resolution NONE); it does nothing for other clusters.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import (
    dynamic_forward_proxy_pb2 as dfp_filter_pb2,
)
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import duration_pb2

from translators.resources import to_any
from translators.route_policies import CORS_FILTER, FAULT_FILTER

PASSTHROUGH_CLUSTER = "PassthroughCluster"
DFP_FILTER = "envoy.filters.http.dynamic_forward_proxy"
_DNS_CACHE = dns_cache_pb2.DnsCacheConfig(
    name="passthrough_dns_cache", dns_lookup_family=cluster_pb2.Cluster.V4_ONLY
)


def _filter(name: str, config) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=name, typed_config=to_any(config))


def _build(with_forward_proxy: bool) -> tuple[hcm_pb2.HttpFilter, ...]:
    filters = [
        _filter(FAULT_FILTER, fault_pb2.HTTPFault()),
        _filter(CORS_FILTER, cors_pb2.Cors()),
    ]
    if with_forward_proxy:
        filters.append(
            _filter(DFP_FILTER, dfp_filter_pb2.FilterConfig(dns_cache_config=_DNS_CACHE))
        )
    filters.append(_filter("envoy.filters.http.router", router_pb2.Router()))
    return tuple(filters)


OUTBOUND_FILTERS = _build(with_forward_proxy=True)
GATEWAY_FILTERS = _build(with_forward_proxy=False)
INBOUND_FILTERS = (_filter("envoy.filters.http.router", router_pb2.Router()),)


def passthrough_cluster(connect_timeout: duration_pb2.Duration) -> cluster_pb2.Cluster:
    """ALLOW_ANY's destination for hosts outside the registry."""
    return forward_proxy_cluster(PASSTHROUGH_CLUSTER, connect_timeout)


def forward_proxy_cluster(name: str, connect_timeout: duration_pb2.Duration) -> cluster_pb2.Cluster:
    """Connects to whatever host:port the request named, resolved by DNS on this host."""
    cluster = cluster_pb2.Cluster(
        name=name,
        connect_timeout=connect_timeout,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
    )
    cluster.cluster_type.name = "envoy.clusters.dynamic_forward_proxy"
    cluster.cluster_type.typed_config.Pack(
        dfp_cluster_pb2.ClusterConfig(dns_cache_config=_DNS_CACHE)
    )
    return cluster
