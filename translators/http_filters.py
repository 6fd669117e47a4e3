"""HTTP filters of our HTTP connection managers, from one registry with an explicit order
(Istio §2.12, stock-Envoy subset).

Each filter says where it goes (sidecar outbound, sidecar inbound, gateway) and where in
the chain (lower first; the router last). Security and telemetry add theirs with
`register`, and every connection manager built by translators.hcm gets them.

Fault and CORS filters sit in outbound and gateway chains with empty configs, as in
Istio: a route's typed_per_filter_config switches them on for that route only. The
outbound chain also has the dynamic forward proxy filter, which resolves the Host of
requests routed to the PassthroughCluster (ALLOW_ANY and resolution NONE); it does
nothing for other clusters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
from google.protobuf.message import Message

from translators.resources import to_any
from translators.route_policies import CORS_FILTER, FAULT_FILTER

PASSTHROUGH_CLUSTER = "PassthroughCluster"
DFP_FILTER = "envoy.filters.http.dynamic_forward_proxy"
_DNS_CACHE = dns_cache_pb2.DnsCacheConfig(
    name="passthrough_dns_cache", dns_lookup_family=cluster_pb2.Cluster.V4_ONLY
)


OUTBOUND, INBOUND, GATEWAY = "outbound", "inbound", "gateway"
ROUTER = "envoy.filters.http.router"


@dataclass(frozen=True)
class HttpFilterSpec:
    """One HTTP filter: its name, its place in the chain, where it goes, its config."""

    name: str
    order: int
    sides: frozenset[str]
    config: Callable[[], Message]


_REGISTRY: dict[str, HttpFilterSpec] = {}
_CHAINS: dict[str, tuple[hcm_pb2.HttpFilter, ...]] = {}


def register(spec: HttpFilterSpec) -> None:
    """Add (or replace) a filter in every chain of its sides, at its order."""
    _REGISTRY[spec.name] = spec
    _CHAINS.clear()


def filters_for(side: str) -> tuple[hcm_pb2.HttpFilter, ...]:
    """The HTTP filters of a connection manager on `side`, in chain order (built once)."""
    chain = _CHAINS.get(side)
    if chain is None:
        specs = sorted(
            (s for s in _REGISTRY.values() if side in s.sides), key=lambda s: (s.order, s.name)
        )
        chain = tuple(
            hcm_pb2.HttpFilter(name=s.name, typed_config=to_any(s.config())) for s in specs
        )
        _CHAINS[side] = chain
    return chain


_ROUTED = frozenset({OUTBOUND, GATEWAY})
for _spec in (
    HttpFilterSpec(FAULT_FILTER, 100, _ROUTED, fault_pb2.HTTPFault),
    HttpFilterSpec(CORS_FILTER, 200, _ROUTED, cors_pb2.Cors),
    HttpFilterSpec(
        DFP_FILTER,
        300,
        frozenset({OUTBOUND}),
        lambda: dfp_filter_pb2.FilterConfig(dns_cache_config=_DNS_CACHE),
    ),
    HttpFilterSpec(ROUTER, 10_000, frozenset({OUTBOUND, INBOUND, GATEWAY}), router_pb2.Router),
):
    register(_spec)


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
