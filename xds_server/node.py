"""A connected Envoy's node (id + metadata written by `xds-server bootstrap`) as a Proxy."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from translators import model

# Node metadata keys; the first four are Istio's own.
NAMESPACE = "NAMESPACE"
LABELS = "LABELS"
SERVICE_ACCOUNT = "SERVICE_ACCOUNT"
INSTANCE_IPS = "INSTANCE_IPS"
ROLE = "ROLE"
BIND_ADDRESS = "BIND_ADDRESS"
OUTBOUND_ADDRESS = "OUTBOUND_ADDRESS"
OUTBOUND_PORT = "OUTBOUND_PORT"
WORKLOAD_PORTS = "WORKLOAD_PORTS"  # "app:inbound,app:inbound", e.g. "9080:15006"

ROLES = ("sidecar", "gateway")


class NodeError(ValueError):
    """The node's metadata cannot describe a workload; the message names the key."""


def _port(value: object, key: str) -> int:
    try:
        port = int(str(value))
    except ValueError:
        raise NodeError(f"node.metadata.{key}: {value!r} is not a port number") from None
    if not 0 < port <= 65535:
        raise NodeError(f"node.metadata.{key}: port {port} out of range 1-65535")
    return port


def format_ports(ports: list[model.WorkloadPort]) -> str:
    return ",".join(f"{p.app_port}:{p.inbound_port}" for p in ports)


def parse_ports(text: str) -> tuple[model.WorkloadPort, ...]:
    ports = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        app, sep, inbound = item.partition(":")
        if not sep:
            raise NodeError(f"node.metadata.{WORKLOAD_PORTS}: {item!r} is not APP:INBOUND")
        ports.append(model.WorkloadPort(_port(app, WORKLOAD_PORTS), _port(inbound, WORKLOAD_PORTS)))
    return tuple(ports)


def peer_ip(peer: str) -> str:
    """The IP in a gRPC peer string ("ipv4:10.0.0.5:4242", "ipv6:[::1]:4242")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[") or "::1"
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return "127.0.0.1"


def proxy_from_node(node: base_pb2.Node, peer: str = "") -> model.Proxy:
    if not node.id:
        raise NodeError("node.id is required (set it in the bootstrap)")
    meta = json_format.MessageToDict(node.metadata)
    role = str(meta.get(ROLE, "sidecar"))
    if role not in ROLES:
        raise NodeError(f"node.metadata.{ROLE}: unsupported role {role!r}")
    labels = meta.get(LABELS, {})
    if not isinstance(labels, dict):
        raise NodeError(f"node.metadata.{LABELS} must be a map of strings")
    ips = [ip.strip() for ip in str(meta.get(INSTANCE_IPS, "")).split(",") if ip.strip()]
    ip = ips[0] if ips else peer_ip(peer)
    return model.Proxy(
        node_id=node.id,
        namespace=str(meta.get(NAMESPACE, model.DEFAULT_NAMESPACE)),
        labels={str(k): str(v) for k, v in labels.items()},
        service_account=str(meta.get(SERVICE_ACCOUNT, "default")),
        ip=ip,
        role=role,
        bind_address=str(meta.get(BIND_ADDRESS, ip)),
        outbound_address=str(meta.get(OUTBOUND_ADDRESS, "127.0.0.1")),
        outbound_port=_port(meta.get(OUTBOUND_PORT, 15001), OUTBOUND_PORT),
        ports=parse_ports(str(meta.get(WORKLOAD_PORTS, ""))),
    )
