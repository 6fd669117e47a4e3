"""ClusterLoadAssignments for the EDS clusters (subset clusters keep matching labels only).

Only IP endpoints are sent: a WorkloadEntry may name a DNS host (for a ServiceEntry that
resolves by DNS), but Envoy refuses a whole EDS update that carries one, for every proxy.
Validation reports such an entry with file:line (checks_envoy.endpoint_findings).
"""

from __future__ import annotations

from envoy.config.endpoint.v3 import endpoint_pb2

from protos import destination_rule_pb2 as dr_pb2
from translators.clusters import load_assignment, subset_endpoints
from translators.destination_rules import DestinationRuleIndex
from translators.naming import is_ip, outbound_cluster
from translators.services import EDS, Endpoint, Service


def _routable(endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    if all(is_ip(e.address) for e in endpoints):
        return endpoints
    return tuple(e for e in endpoints if is_ip(e.address))


def service_endpoints(
    service: Service, rule: dr_pb2.DestinationRule | None
) -> list[endpoint_pb2.ClusterLoadAssignment]:
    """Assignments for the EDS clusters of one service: its ports and their subsets."""
    if service.resolution != EDS:
        return []
    assignments = []
    for port in service.ports:
        name = outbound_cluster(port.port, service.hostname)
        assignments.append(load_assignment(name, _routable(service.endpoints.get(port.port, ()))))
        for subset in rule.subsets if rule else ():
            assignments.append(
                load_assignment(
                    outbound_cluster(port.port, service.hostname, subset.name),
                    _routable(subset_endpoints(service, port, subset.labels)),
                )
            )
    return assignments


def outbound_endpoints(
    services: dict[str, Service], rules: DestinationRuleIndex, proxy_namespace: str
) -> list[endpoint_pb2.ClusterLoadAssignment]:
    assignments = []
    for host in sorted(services):
        service = services[host]
        rule = rules.lookup(host, proxy_namespace, service.namespace)
        assignments += service_endpoints(service, rule)
    return assignments
