"""ClusterLoadAssignments for the EDS clusters (subset clusters keep matching labels only).

Only IP endpoints are sent: a WorkloadEntry may name a DNS host (for a ServiceEntry that
resolves by DNS), but Envoy refuses a whole EDS update that carries one, for every proxy.
Validation reports such an entry with file:line (checks_envoy.endpoint_findings).
"""

from __future__ import annotations

from protos import destination_rule_pb2 as dr_pb2
from translators.clusters import load_assignment, subset_endpoints
from translators.naming import is_ip, outbound_cluster
from translators.resources import Packed, field_bytes, pack_serialized
from translators.services import EDS, Endpoint, Service


def _routable(endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    if all(is_ip(e.address) for e in endpoints):
        return endpoints
    return tuple(e for e in endpoints if is_ip(e.address))


_ASSIGNMENT = "envoy.config.endpoint.v3.ClusterLoadAssignment"
_LOCALITIES: dict[tuple[tuple[str, int, int], ...], bytes] = {}


def packed_service_endpoints(
    service: Service, rule: dr_pb2.DestinationRule | None
) -> dict[str, Packed]:
    """service_endpoints, packed, built as bytes: an assignment is its cluster name and
    one locality, and the locality's bytes depend on the endpoints alone, so a subset
    with the same endpoints as another (or as another push's) costs no message at all."""
    if service.resolution != EDS:
        return {}
    out: dict[str, Packed] = {}
    for port in service.ports:
        everyone = service.endpoints.get(port.port, ())
        variants = [(outbound_cluster(port.port, service.hostname), everyone)]
        for subset in rule.subsets if rule else ():
            variants.append(
                (
                    outbound_cluster(port.port, service.hostname, subset.name),
                    subset_endpoints(service, port, subset.labels),
                )
            )
        for name, endpoints in variants:
            body = field_bytes(1, name.encode())
            routable = _routable(tuple(endpoints))
            if routable:
                body += field_bytes(2, _locality(routable))
            out[name] = pack_serialized(name, _ASSIGNMENT, body)
    return out


def _locality(endpoints: tuple[Endpoint, ...]) -> bytes:
    key = tuple((e.address, e.port, e.weight) for e in endpoints)  # what the bytes hold
    found = _LOCALITIES.get(key)
    if found is None:
        (locality,) = load_assignment("", endpoints).endpoints
        found = locality.SerializeToString(deterministic=True)
        if len(_LOCALITIES) > 65536:
            _LOCALITIES.clear()
        _LOCALITIES[key] = found
    return found
