"""A connected Envoy's node (id + metadata written by `xds-server bootstrap`) as a Proxy."""

from __future__ import annotations

import ipaddress
import re

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from translators import model
from xds_server.text import safe_text

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
INTERCEPTION_MODE = "INTERCEPTION_MODE"  # Istio's: NONE or REDIRECT
ADMIN_ADDRESS = "ADMIN_ADDRESS"  # host:port of the Envoy's admin API, for proxy-status
WORKLOAD_NAME = "WORKLOAD_NAME"  # Istio's: the workload's name in metrics (default node.id)

ROLES = ("sidecar", "gateway")
MAX_NODE_ID = 256
_NODE_ID = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
# Kubernetes label keys ([prefix/]name) and values.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"({_DNS_SUBDOMAIN.pattern}/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")


class NodeError(ValueError):
    """The node's metadata cannot describe a workload; the message names the key."""


def _port(value: object, key: str) -> int:
    try:
        port = int(str(value))
    except ValueError:
        raise NodeError(f"node.metadata.{key}: {_shown(value)} is not a port number") from None
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
            raise NodeError(f"node.metadata.{WORKLOAD_PORTS}: {_shown(item)} is not APP:INBOUND")
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


def _shown(value: object) -> str:
    return safe_text(repr(value), 100)


def _ip(value: str, key: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise NodeError(f"node.metadata.{key}: {_shown(value)} is not an IP address") from None


def check_proxy(proxy: model.Proxy) -> None:
    """Refuse what could reach other proxies' configuration or the logs malformed: every
    address an IP, names as Kubernetes spells them, ports unique."""
    if not proxy.node_id:
        raise NodeError("node.id is required (set it in the bootstrap)")
    if len(proxy.node_id) > MAX_NODE_ID or not _NODE_ID.fullmatch(proxy.node_id):
        raise NodeError(
            f"node.id {_shown(proxy.node_id)}: at most {MAX_NODE_ID} printable ASCII "
            "characters without spaces"
        )
    if not _DNS_LABEL.fullmatch(proxy.namespace):
        raise NodeError(f"node.metadata.{NAMESPACE}: {_shown(proxy.namespace)} is not a namespace")
    if not _DNS_SUBDOMAIN.fullmatch(proxy.service_account):
        raise NodeError(
            f"node.metadata.{SERVICE_ACCOUNT}: {_shown(proxy.service_account)} is not a "
            "service account name"
        )
    for key, value in proxy.labels.items():
        if not _LABEL_KEY.fullmatch(key) or len(key) > 317:
            raise NodeError(f"node.metadata.{LABELS}: {_shown(key)} is not a label name")
        if not _LABEL_VALUE.fullmatch(value):
            raise NodeError(f"node.metadata.{LABELS}.{key}: {_shown(value)} is not a label value")
    if proxy.workload_name and not _DNS_SUBDOMAIN.fullmatch(proxy.workload_name):
        raise NodeError(
            f"node.metadata.{WORKLOAD_NAME}: {_shown(proxy.workload_name)} is not a workload name"
        )
    if proxy.interception not in model.INTERCEPTION_MODES:
        raise NodeError(
            f"node.metadata.{INTERCEPTION_MODE}: {_shown(proxy.interception)} is not one of "
            f"{', '.join(model.INTERCEPTION_MODES)}"
        )
    if proxy.role not in ROLES:
        raise NodeError(f"node.metadata.{ROLE}: unsupported role {_shown(proxy.role)}")
    _ip(proxy.ip, INSTANCE_IPS)
    _ip(proxy.bind_address, BIND_ADDRESS)
    _ip(proxy.outbound_address, OUTBOUND_ADDRESS)
    _port(proxy.outbound_port, OUTBOUND_PORT)
    apps, inbounds = set(), set()
    for port in proxy.ports:
        _port(port.app_port, WORKLOAD_PORTS)
        _port(port.inbound_port, WORKLOAD_PORTS)
        if port.app_port in apps or port.inbound_port in inbounds:
            raise NodeError(f"node.metadata.{WORKLOAD_PORTS}: a port appears twice")
        apps.add(port.app_port)
        inbounds.add(port.inbound_port)
    if proxy.outbound_port in inbounds:
        raise NodeError(
            f"node.metadata.{WORKLOAD_PORTS}: inbound port {proxy.outbound_port} is also "
            f"the {OUTBOUND_PORT}"
        )


def proxy_from_node(node: base_pb2.Node, peer: str = "") -> model.Proxy:
    """The proxy a node describes; NodeError (naming the key) if it cannot be trusted."""
    if not node.id:
        raise NodeError("node.id is required (set it in the bootstrap)")
    meta = json_format.MessageToDict(node.metadata)
    labels = meta.get(LABELS, {})
    if not isinstance(labels, dict):
        raise NodeError(f"node.metadata.{LABELS} must be a map of strings")
    ips = [ip.strip() for ip in str(meta.get(INSTANCE_IPS, "")).split(",") if ip.strip()]
    for ip in ips:
        _ip(ip, INSTANCE_IPS)
    ip = ips[0] if ips else peer_ip(peer)
    proxy = model.Proxy(
        node_id=node.id,
        namespace=str(meta.get(NAMESPACE, model.DEFAULT_NAMESPACE)),
        labels={str(k): str(v) for k, v in labels.items()},
        service_account=str(meta.get(SERVICE_ACCOUNT, "default")),
        ip=ip,
        role=str(meta.get(ROLE, "sidecar")),
        bind_address=str(meta.get(BIND_ADDRESS, ip)),
        outbound_address=str(meta.get(OUTBOUND_ADDRESS, "127.0.0.1")),
        outbound_port=_port(meta.get(OUTBOUND_PORT, 15001), OUTBOUND_PORT),
        ports=parse_ports(str(meta.get(WORKLOAD_PORTS, ""))),
        interception=str(meta.get(INTERCEPTION_MODE, "NONE")).upper(),
        workload_name=str(meta.get(WORKLOAD_NAME, "")),
    )
    check_proxy(proxy)
    return proxy
