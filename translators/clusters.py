"""Outbound and inbound Envoy Clusters (Istio §4)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from protos import destination_rule_pb2
from translators import model
from translators.client_tls import apply_client_tls
from translators.cluster_settings import (
    apply_connection_limits,
    apply_http_options,
    apply_traffic_policy,
)
from translators.http_filters import forward_proxy_cluster
from translators.istio_metrics import METADATA, UNKNOWN, app_of, version_of
from translators.mtls import TRANSPORT_SOCKET_MATCH, client_socket_matches
from translators.naming import has_labels, inbound_cluster, outbound_cluster
from translators.resources import Packed, field_bytes, pack_all, pack_serialized
from translators.services import (
    EDS,
    LOGICAL_DNS,
    PASSTHROUGH,
    STRICT_DNS,
    Endpoint,
    Service,
    ServicePort,
)
from translators.traffic_policy import effective_policy, has_policies

MAX_UINT32 = 4294967295

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


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def lb_endpoint(endpoint: Endpoint) -> endpoint_components_pb2.LbEndpoint:
    found = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=socket_address(endpoint.address, endpoint.port)
        ),
        load_balancing_weight=wrappers_pb2.UInt32Value(value=endpoint.weight),
    )
    if endpoint.mtls:  # picks the cluster's mutual TLS socket (mtls.client_socket_matches)
        found.metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].update({"tlsMode": "istio"})
    if endpoint.workload or endpoint.labels:  # the destination_* labels of Istio's metrics
        found.metadata.filter_metadata[METADATA].update(
            {
                "workload": endpoint.workload or UNKNOWN,
                "app": app_of(endpoint.labels),
                "version": version_of(endpoint.labels),
            }
        )
    return found


@lru_cache(maxsize=65536)
def service_metadata(host: str, name: str, namespace: str) -> base_pb2.Metadata:
    """A service's cluster metadata: the destination_service labels of Istio's metrics."""
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[METADATA].update(
        {"service": host, "name": name or host, "namespace": namespace}
    )
    return metadata


def _metadata_field(service: Service) -> bytes:
    """service_metadata as Cluster.metadata (field 25), serialized."""
    found = _METADATA_FIELDS.get(service.hostname)
    if found is None or found[0] != (service.short_name, service.namespace):
        metadata = service_metadata(service.hostname, service.short_name, service.namespace)
        found = (
            (service.short_name, service.namespace),
            field_bytes(25, metadata.SerializeToString(deterministic=True)),
        )
        if len(_METADATA_FIELDS) > 65536:
            _METADATA_FIELDS.clear()
        _METADATA_FIELDS[service.hostname] = found
    return found[1]


_METADATA_FIELDS: dict[str, tuple[tuple[str, str], bytes]] = {}


def load_assignment(name: str, endpoints) -> endpoint_pb2.ClusterLoadAssignment:
    """A ClusterLoadAssignment with one locality; the locality weight keeps gRPC clients happy."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
                lb_endpoints=[lb_endpoint(e) for e in endpoints],
            )
        ]
        if endpoints
        else [],
    )


def subset_endpoints(service: Service, port: ServicePort, labels) -> tuple:
    return tuple(e for e in service.endpoints.get(port.port, ()) if has_labels(e.labels, labels))


def _cluster(
    name: str,
    service: Service,
    port: ServicePort,
    policy: destination_rule_pb2.TrafficPolicy,
    connect_timeout: duration_pb2.Duration,
    labels,
    mtls: bool = False,
) -> cluster_pb2.Cluster:
    if service.resolution == PASSTHROUGH:
        cluster = forward_proxy_cluster(name, connect_timeout)
        cluster.circuit_breakers.CopyFrom(_default_circuit_breakers())
        cluster.metadata.CopyFrom(
            service_metadata(service.hostname, service.short_name, service.namespace)
        )
        apply_connection_limits(cluster, policy.connection_pool)
        if port.is_http:
            apply_http_options(cluster, policy.connection_pool, port)
        if policy.HasField("tls"):  # TLS origination to whichever host was asked for
            apply_client_tls(cluster, policy.tls, port.is_http, None, mtls)
        return cluster
    cluster = cluster_pb2.Cluster(
        name=name,
        type=_DISCOVERY[service.resolution],
        connect_timeout=connect_timeout,
        circuit_breakers=_default_circuit_breakers(),
        metadata=service_metadata(service.hostname, service.short_name, service.namespace),
    )
    if service.resolution == EDS:
        cluster.eds_cluster_config.eds_config.CopyFrom(ADS_SOURCE)
        cluster.eds_cluster_config.service_name = name
    else:
        cluster.load_assignment.CopyFrom(
            load_assignment(name, subset_endpoints(service, port, labels))
        )
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
    apply_traffic_policy(cluster, policy, port)
    if policy.HasField("tls"):  # DestinationRule tls, in place of auto mTLS
        hostname = None if service.resolution == EDS else service.hostname
        apply_client_tls(cluster, policy.tls, port.is_http, hostname, mtls)
    elif mtls:
        # Auto mTLS: TLS to the endpoints that hold a certificate, plaintext to others.
        cluster.transport_socket_matches.extend(client_socket_matches())
    return cluster


RetryBudget = circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget


def service_clusters(
    service: Service,
    rule: destination_rule_pb2.DestinationRule | None,
    connect_timeout: duration_pb2.Duration,
    budget: RetryBudget | None = None,
    mtls: bool = False,
) -> list[cluster_pb2.Cluster]:
    """One cluster per port of `service`, plus one per subset of its DestinationRule."""
    clusters = []
    host = service.hostname
    for port in service.ports:
        variants = [(outbound_cluster(port.port, host), None, {})]
        for subset in rule.subsets if rule and service.resolution != PASSTHROUGH else ():
            variants.append((outbound_cluster(port.port, host, subset.name), subset, subset.labels))
        for name, subset, labels in variants:
            policy = effective_policy(rule, subset, port.port)
            cluster = _cluster(name, service, port, policy, connect_timeout, labels, mtls)
            if budget is not None:
                cluster.circuit_breakers.thresholds[0].retry_budget.CopyFrom(budget)
            clusters.append(cluster)
    return clusters


# A cluster of a service: its port, name, name as field 1 (of a Cluster and of its
# ClusterLoadAssignment alike), and its subset (None for the port's own cluster).
Variant = tuple[ServicePort, str, bytes, "destination_rule_pb2.Subset | None"]


def cluster_variants(
    service: Service, rule: destination_rule_pb2.DestinationRule | None
) -> list[Variant]:
    """One cluster per port of `service`, plus one per subset of its DestinationRule:
    what clusters and assignments are both named after."""
    out: list[Variant] = []
    for port in service.ports:
        name = outbound_cluster(port.port, service.hostname)
        out.append((port, name, field_bytes(1, name.encode()), None))
        for subset in rule.subsets if rule else ():
            name = outbound_cluster(port.port, service.hostname, subset.name)
            out.append((port, name, field_bytes(1, name.encode()), subset))
    return out


_CLUSTER = "envoy.config.cluster.v3.Cluster"
# (port protocol, policy, connect timeout, retry budget, mTLS) -> an EDS cluster's bytes around
# its name: (type field, EDS config without the service name, every later field).
_TEMPLATES: dict[tuple[str, bytes, bytes, bytes, bool], tuple[bytes, bytes, bytes]] = {}


def packed_service_clusters(
    service: Service,
    rule: destination_rule_pb2.DestinationRule | None,
    connect_timeout: duration_pb2.Duration,
    budget: RetryBudget | None = None,
    variants: list[Variant] | None = None,
    mtls: bool = False,
) -> dict[str, Packed]:
    """service_clusters, packed. An EDS cluster is its name around bytes that depend
    only on the port's protocol and the policy: those are built once per policy (for
    all services, and across pushes) and each cluster is joined from them."""
    if service.resolution != EDS:
        return pack_all(service_clusters(service, rule, connect_timeout, budget, mtls))
    timeout = connect_timeout.SerializeToString(deterministic=True)
    limits = budget.SerializeToString(deterministic=True) if budget is not None else b""
    out: dict[str, Packed] = {}
    free = rule is None or not has_policies(rule)  # every variant's policy is empty
    metadata = _metadata_field(service)
    for port, name, name_field, subset in variants or cluster_variants(service, rule):
        policy = None if free else effective_policy(rule, subset, port.port)
        key = (
            port.protocol,
            policy.SerializeToString(deterministic=True) if policy is not None else b"",
            timeout,
            limits,
            mtls,
        )
        template = _TEMPLATES.get(key)
        if template is None:
            if policy is None:
                policy = effective_policy(rule, subset, port.port)
            cluster = _cluster(name, service, port, policy, connect_timeout, {}, mtls)
            cluster.ClearField("metadata")  # the service's own, joined below
            if budget is not None:
                cluster.circuit_breakers.thresholds[0].retry_budget.CopyFrom(budget)
            template = _template(cluster)
            if len(_TEMPLATES) > 4096:
                _TEMPLATES.clear()
            _TEMPLATES[key] = template
        kind, eds, rest = template
        # The EDS service name is the cluster's name as field 2 of the EDS config.
        service_name = _SERVICE_NAME_TAG + name_field[1:]
        body = name_field + kind + field_bytes(3, eds + service_name)
        out[name] = pack_serialized(name, _CLUSTER, body + rest + metadata)
    return out


_SERVICE_NAME_TAG = field_bytes(2, b"")[:1]


def _template(cluster: cluster_pb2.Cluster) -> tuple[bytes, bytes, bytes]:
    """An EDS cluster's bytes without its name (field 1) and EDS service name: the type
    (field 2), the EDS config (field 3) and the rest (fields 4 and up), as serialized."""
    copy = cluster_pb2.Cluster()
    copy.CopyFrom(cluster)
    copy.name = ""
    copy.eds_cluster_config.service_name = ""
    eds = copy.eds_cluster_config.SerializeToString(deterministic=True)
    kind = cluster_pb2.Cluster(type=copy.type).SerializeToString(deterministic=True)
    copy.ClearField("eds_cluster_config")
    copy.ClearField("type")
    return kind, eds, copy.SerializeToString(deterministic=True)


def inbound_clusters(
    config: model.MeshConfig,
    proxy: model.Proxy,
    services: Mapping[int, tuple[str, str, str]] | None = None,
) -> list[cluster_pb2.Cluster]:
    """`inbound|<app port>||`: the sidecar's own application; with the service that
    reaches each app port (`services`: host, name, namespace) as metadata, for the
    destination_service labels of Istio's metrics."""
    clusters = []
    for port in proxy.ports:
        name = inbound_cluster(port.app_port)
        service = (services or {}).get(port.app_port)
        clusters.append(
            cluster_pb2.Cluster(
                metadata=service_metadata(*service) if service else None,
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
