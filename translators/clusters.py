"""Outbound and inbound Envoy Clusters (Istio §4)."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from protos import destination_rule_pb2
from translators import model
from translators.destination_rules import DestinationRuleIndex, subset_policy
from translators.naming import inbound_cluster, outbound_cluster
from translators.services import EDS, LOGICAL_DNS, STRICT_DNS, Service, ServicePort

MAX_UINT32 = 4294967295
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_LB = destination_rule_pb2.LoadBalancerSettings
_LB_POLICY = {
    _LB.UNSPECIFIED: cluster_pb2.Cluster.LEAST_REQUEST,
    _LB.LEAST_CONN: cluster_pb2.Cluster.LEAST_REQUEST,
    _LB.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    _LB.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    _LB.RANDOM: cluster_pb2.Cluster.RANDOM,
}
_DISCOVERY = {
    EDS: cluster_pb2.Cluster.EDS,
    STRICT_DNS: cluster_pb2.Cluster.STRICT_DNS,
    LOGICAL_DNS: cluster_pb2.Cluster.LOGICAL_DNS,
}
ADS_SOURCE = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(),
    resource_api_version=config_source_pb2.V3,
)


def _default_circuit_breakers() -> circuit_breaker_pb2.CircuitBreakers:
    """Istio lifts Envoy's 1024-request limits to MaxUint32 on every cluster.

    Built once: message constructors copy it, so every cluster gets its own."""
    return _DEFAULT_CIRCUIT_BREAKERS


def _build_default_circuit_breakers() -> circuit_breaker_pb2.CircuitBreakers:
    limit = wrappers_pb2.UInt32Value(value=MAX_UINT32)
    return circuit_breaker_pb2.CircuitBreakers(
        thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                max_connections=limit,
                max_pending_requests=limit,
                max_requests=limit,
                max_retries=limit,
                track_remaining=True,
            )
        ]
    )


_DEFAULT_CIRCUIT_BREAKERS = _build_default_circuit_breakers()


def _h2_options() -> any_pb2.Any:
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    packed = any_pb2.Any()
    packed.Pack(options)
    return packed


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def load_assignment(name: str, endpoints) -> endpoint_pb2.ClusterLoadAssignment:
    """A ClusterLoadAssignment with one locality; the locality weight keeps gRPC clients happy."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=socket_address(e.address, e.port)
                        ),
                        load_balancing_weight=wrappers_pb2.UInt32Value(value=e.weight),
                    )
                    for e in endpoints
                ],
            )
        ]
        if endpoints
        else [],
    )


def subset_endpoints(service: Service, port: ServicePort, labels) -> tuple:
    return tuple(
        e
        for e in service.endpoints.get(port.port, ())
        if all(e.labels.get(k) == v for k, v in labels.items())
    )


def _cluster(
    name: str,
    service: Service,
    port: ServicePort,
    policy: destination_rule_pb2.TrafficPolicy,
    connect_timeout: duration_pb2.Duration,
    labels,
) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        type=_DISCOVERY[service.resolution],
        connect_timeout=connect_timeout,
        lb_policy=_LB_POLICY[policy.load_balancer.simple],
        circuit_breakers=_default_circuit_breakers(),
    )
    if service.resolution == EDS:
        cluster.eds_cluster_config.eds_config.CopyFrom(ADS_SOURCE)
        cluster.eds_cluster_config.service_name = name
    else:
        cluster.load_assignment.CopyFrom(
            load_assignment(name, subset_endpoints(service, port, labels))
        )
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
    if port.is_h2:
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(_h2_options())
    return cluster


def outbound_clusters(
    config: model.MeshConfig,
    services: dict[str, Service],
    rules: DestinationRuleIndex,
    proxy_namespace: str,
) -> list[cluster_pb2.Cluster]:
    """One cluster per service port, plus one per DestinationRule subset and port."""
    clusters = []
    timeout = config.mesh.connect_timeout
    for host in sorted(services):
        service = services[host]
        rule = rules.lookup(host, proxy_namespace, service.namespace)
        for port in service.ports:
            base_policy = (
                subset_policy(rule, None) if rule else destination_rule_pb2.TrafficPolicy()
            )
            clusters.append(
                _cluster(outbound_cluster(port.port, host), service, port, base_policy, timeout, {})
            )
            for subset in rule.subsets if rule else ():
                clusters.append(
                    _cluster(
                        outbound_cluster(port.port, host, subset.name),
                        service,
                        port,
                        subset_policy(rule, subset),
                        timeout,
                        subset.labels,
                    )
                )
    return clusters


def inbound_clusters(config: model.MeshConfig, proxy: model.Proxy) -> list[cluster_pb2.Cluster]:
    """`inbound|<app port>||`: the sidecar's own application."""
    clusters = []
    for port in proxy.ports:
        name = inbound_cluster(port.app_port)
        clusters.append(
            cluster_pb2.Cluster(
                name=name,
                type=cluster_pb2.Cluster.STATIC,
                connect_timeout=config.mesh.connect_timeout,
                lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
                circuit_breakers=_default_circuit_breakers(),
                load_assignment=endpoint_pb2.ClusterLoadAssignment(
                    cluster_name=name,
                    endpoints=[
                        endpoint_components_pb2.LocalityLbEndpoints(
                            lb_endpoints=[
                                endpoint_components_pb2.LbEndpoint(
                                    endpoint=endpoint_components_pb2.Endpoint(
                                        address=socket_address(proxy.app_address, port.app_port)
                                    )
                                )
                            ]
                        )
                    ],
                ),
            )
        )
    return clusters
