"""Envoy bootstrap for one sidecar: node identity and metadata, admin, ADS to the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from protos import mesh_config_pb2
from translators import model
from translators.naming import is_ip
from translators.telemetry import proxy_config
from xds_server import node
from xds_server.prometheus_listener import prometheus_resources, stats_matcher

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass
class BootstrapOptions:
    node_id: str
    namespace: str = model.DEFAULT_NAMESPACE
    labels: dict[str, str] = field(default_factory=dict)
    service_account: str = "default"
    app_ports: list[int] = field(default_factory=list)
    inbound_ports: list[int] = field(default_factory=list)
    xds_address: str = "127.0.0.1:15010"
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    outbound_address: str = "127.0.0.1"
    outbound_port: int = 15001
    ip: str = ""  # empty: the server uses the address the sidecar connects from
    bind_address: str = ""  # inbound listeners; empty: the workload IP
    cluster: str = ""
    role: str = "sidecar"  # or "gateway": an ingress proxy Gateway resources select
    xds_api: str = "delta"  # or "sotw": state of the world
    interception_mode: str = "NONE"  # or "REDIRECT": traffic captured by iptables
    token: str = ""  # `xds-server token`: sent on the xDS stream, binds it to an identity
    # The mesh root (a PEM file Envoy reads): xDS goes over TLS, and the server must hold
    # a certificate from that root for `xds_server_name`.
    xds_root_cert: str = ""
    xds_root_pem: str = ""  # the root itself, inline, instead of a file
    xds_server_name: str = "xds-server"
    workload_name: str = ""  # Istio's WORKLOAD_NAME: source/destination_workload in metrics
    # Istio's Prometheus port: /stats/prometheus with Istio's metric names; 0: none.
    stats_address: str = "0.0.0.0"
    stats_port: int = 15090
    # Envoy's stats_config.stats_matcher (from the mesh's defaultConfig.proxyStatsMatcher:
    # stats_matcher_of); None keeps every stat.
    stats_matcher: dict[str, Any] | None = None


XDS_APIS = {"delta": "DELTA_GRPC", "sotw": "GRPC"}


def workload_ports(app_ports: list[int], inbound_ports: list[int]) -> list[model.WorkloadPort]:
    """Pair app ports with inbound ports; missing inbound ports count up from the last
    given one (15006 when none is)."""
    if len(inbound_ports) > len(app_ports):
        raise ValueError("more --inbound-port than --app-port values")
    pairs = []
    next_port = 15006
    for index, app in enumerate(app_ports):
        inbound = inbound_ports[index] if index < len(inbound_ports) else next_port
        pairs.append(model.WorkloadPort(app, inbound))
        next_port = inbound + 1
    return pairs


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--xds-address {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def _xds_tls(trusted: dict[str, str], server_name: str) -> dict[str, Any]:
    """TLS to the server's xDS port, verified with the mesh root and by name."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"type.googleapis.com/{UPSTREAM_TLS}",
            "sni": server_name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "validation_context": {
                    "trusted_ca": trusted,
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": server_name}}
                    ],
                },
            },
        },
    }


def bootstrap(options: BootstrapOptions) -> dict[str, Any]:
    if options.xds_api not in XDS_APIS:
        raise ValueError(f"--xds-api must be one of {', '.join(XDS_APIS)}")
    host, port = _split_address(options.xds_address)
    ports = workload_ports(options.app_ports, options.inbound_ports)
    metadata: dict[str, Any] = {
        node.NAMESPACE: options.namespace,
        node.LABELS: dict(options.labels),
        node.SERVICE_ACCOUNT: options.service_account,
        node.ROLE: options.role,
        node.OUTBOUND_ADDRESS: options.outbound_address,
        node.OUTBOUND_PORT: str(options.outbound_port),
        node.WORKLOAD_PORTS: node.format_ports(ports),
    }
    if options.interception_mode != "NONE":
        metadata[node.INTERCEPTION_MODE] = options.interception_mode
    if options.workload_name:
        metadata[node.WORKLOAD_NAME] = options.workload_name
    metadata[node.ADMIN_ADDRESS] = f"{options.admin_address}:{options.admin_port}"
    if options.ip:
        metadata[node.INSTANCE_IPS] = options.ip
    if options.bind_address:
        metadata[node.BIND_ADDRESS] = options.bind_address
    xds_cluster: dict[str, Any] = {
        "name": "xds_cluster",
        "type": "STATIC" if is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        # ADS is gRPC: without HTTP/2 the stream silently never comes up.
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "xds_cluster",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    if options.xds_root_cert or options.xds_root_pem:
        trusted = (
            {"inline_string": options.xds_root_pem}
            if options.xds_root_pem
            else {"filename": options.xds_root_cert}
        )
        xds_cluster["transport_socket"] = _xds_tls(trusted, options.xds_server_name)
    grpc_service: dict[str, Any] = {
        "envoy_grpc": {
            "cluster_name": "xds_cluster",
            "retry_policy": {"retry_back_off": {"base_interval": "0.25s", "max_interval": "5s"}},
        }
    }
    if options.token:
        # gRPC initial metadata on the ADS stream, as Istio's sidecars send theirs.
        grpc_service["initial_metadata"] = [
            {"key": "authorization", "value": f"Bearer {options.token}"}
        ]
    static: dict[str, Any] = {"clusters": [xds_cluster]}
    if options.stats_port:
        listener, cluster = prometheus_resources(
            options.stats_address, options.stats_port, options.admin_address, options.admin_port
        )
        static["listeners"] = [listener]
        static["clusters"].append(cluster)
    out = {
        "node": {
            "id": options.node_id,
            "cluster": options.cluster or options.labels.get("app", options.node_id),
            "metadata": metadata,
        },
        "admin": {
            "address": {
                "socket_address": {
                    "address": options.admin_address,
                    "port_value": options.admin_port,
                }
            }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": XDS_APIS[options.xds_api],
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [grpc_service],
            },
            "cds_config": {"resource_api_version": "V3", "ads": {}},
            "lds_config": {"resource_api_version": "V3", "ads": {}},
        },
        "static_resources": static,
    }
    if options.stats_matcher is not None:
        out["stats_config"] = {"stats_matcher": options.stats_matcher}
    return out


def stats_matcher_of(mesh: mesh_config_pb2.MeshConfig) -> dict[str, Any] | None:
    """defaultConfig.proxyStatsMatcher as Envoy's stats matcher (None: keep all)."""
    matcher = proxy_config(mesh).proxy_stats_matcher
    return stats_matcher(
        {
            "prefixes": list(matcher.inclusion_prefixes),
            "suffixes": list(matcher.inclusion_suffixes),
            "regexps": list(matcher.inclusion_regexps),
        }
    )


def render(options: BootstrapOptions) -> str:
    header = (
        f"# Envoy bootstrap for {options.role} {options.node_id}, "
        "written by `xds-server bootstrap`.\n"
    )
    return header + yaml.safe_dump(bootstrap(options), sort_keys=False)
