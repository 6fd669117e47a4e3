"""ClusterLoadAssignments for the EDS clusters (subset clusters keep matching labels only).

Only IP endpoints are sent: a WorkloadEntry may name a DNS host (for a ServiceEntry that
resolves by DNS), but Envoy refuses a whole EDS update that carries one, for every proxy.
Validation reports such an entry with file:line (checks_envoy.endpoint_findings).
"""

from __future__ import annotations

from protos import destination_rule_pb2 as dr_pb2
from translators.clusters import Variant, cluster_variants, lb_endpoint, subset_endpoints
from translators.memo import PerObject
from translators.naming import is_ip
from translators.resources import Packed, field_bytes, pack_serialized
from translators.services import EDS, Endpoint, Service

_ASSIGNMENT = "envoy.config.endpoint.v3.ClusterLoadAssignment"


def packed_service_endpoints(
    service: Service,
    rule: dr_pb2.DestinationRule | None,
    variants: list[Variant] | None = None,
) -> dict[str, Packed]:
    """service_endpoints, packed, built as bytes: an assignment is its cluster name and
    one locality of the endpoints' own bytes, each built once per endpoint."""
    if service.resolution != EDS:
        return {}
    out: dict[str, Packed] = {}
    for port, name, name_field, subset in variants or cluster_variants(service, rule):
        endpoints = (
            service.endpoints.get(port.port, ())
            if subset is None
            else subset_endpoints(service, port, subset.labels)
        )
        fields = b"".join(map(_lb_endpoint, endpoints))
        body = name_field + field_bytes(2, fields + _LOCALITY_WEIGHT) if fields else name_field
        out[name] = pack_serialized(name, _ASSIGNMENT, body)
    return out


def _lb_endpoint_field(endpoint: Endpoint) -> bytes:
    if not is_ip(endpoint.address):
        return b""
    return field_bytes(2, lb_endpoint(endpoint).SerializeToString(deterministic=True))


# An endpoint as a LocalityLbEndpoints.lb_endpoints field (2), serialized; empty when it
# is not an IP (see above). Endpoints are kept from push to push while they stay.
_lb_endpoint = PerObject(_lb_endpoint_field)
# LocalityLbEndpoints.load_balancing_weight (3): UInt32Value{value: 1}, after the endpoints.
_LOCALITY_WEIGHT = field_bytes(3, b"\x08\x01")
