"""Semantic checks on one typed resource, after its shape was accepted.

Each check returns findings as (field path, message); the loader attaches file, line and
resource. Cross-resource references are resolved at translation time, as Istio does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from google.protobuf.message import Message

from protos import mesh_config_pb2, service_pb2, workload_entry_pb2
from translators import model
from xds_server.config.checks_common import Finding, port_ok, regex_error
from xds_server.config.checks_destination_rule import (
    check_destination_rule,
    destination_rule_warnings,
)
from xds_server.config.checks_edge import check_gateway, check_service_entry, check_sidecar
from xds_server.config.checks_linkerd import check_service_profile, check_traffic_split
from xds_server.config.checks_virtual_service import check_virtual_service

__all__ = ["CHECKS", "Finding", "check", "regex_error", "warnings"]


def _workload_entry(we: workload_entry_pb2.WorkloadEntry) -> Iterator[Finding]:
    if not we.address:
        yield ("spec", "address"), "required: address"


def _service(svc: service_pb2.ServiceSpec) -> Iterator[Finding]:
    if not svc.ports:
        yield ("spec", "ports"), "required: at least one port"
    seen: set[int] = set()
    for i, port in enumerate(svc.ports):
        if not port_ok(port.port):
            yield ("spec", "ports", i, "port"), f"port {port.port} out of range 1-65535"
        if port.port in seen:
            yield ("spec", "ports", i, "port"), f"duplicate port {port.port}"
        seen.add(port.port)


def _mesh(_: mesh_config_pb2.MeshConfig) -> Iterator[Finding]:
    return iter(())


CHECKS: dict[str, Callable[[Message], Iterator[Finding]]] = {
    model.VIRTUAL_SERVICE: check_virtual_service,
    model.DESTINATION_RULE: check_destination_rule,
    model.SERVICE_ENTRY: check_service_entry,
    model.GATEWAY: check_gateway,
    model.SIDECAR: check_sidecar,
    model.TRAFFIC_SPLIT: check_traffic_split,
    model.SERVICE_PROFILE: check_service_profile,
    model.WORKLOAD_ENTRY: _workload_entry,
    model.SERVICE: _service,
    model.MESH_CONFIG: _mesh,
}


def warnings(kind: str, spec: Message) -> Iterator[Finding]:
    """Valid input that this control plane accepts but does not act on yet."""
    if kind == model.MESH_CONFIG and spec.HasField("default_config"):
        yield ("data", "mesh", "defaultConfig"), "accepted but not applied yet"
    if kind == model.DESTINATION_RULE:
        yield from destination_rule_warnings(spec)


def check(kind: str, spec: Message) -> list[Finding]:
    return list(CHECKS[kind](spec))
