"""The sidecar's listeners: one outbound HTTP proxy, one inbound listener per app port.

There is no traffic capture (iptables): the app sends requests to the outbound listener
(as HTTP_PROXY, or with a Host header naming the service), and other sidecars reach this
workload on its inbound listeners, which forward to the app.
"""

from __future__ import annotations

from collections.abc import Collection

from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from translators import model
from translators.clusters import socket_address
from translators.hcm import build_hcm
from translators.http_filters import INBOUND, OUTBOUND
from translators.naming import OUTBOUND_ROUTE_NAME, inbound_cluster, listener_name
from translators.resources import to_any

HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
ZERO = duration_pb2.Duration()


def network_listener(
    name: str, address: str, port: int, filter_name: str, config, direction: int
) -> listener_pb2.Listener:
    """A listener with one filter chain holding one network filter."""
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        traffic_direction=direction,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(name=filter_name, typed_config=to_any(config))
                ]
            )
        ],
    )


def outbound_listener(proxy: model.Proxy) -> listener_pb2.Listener:
    """<outbound address>:<port>, routing by Host/authority through RDS `http_proxy`."""
    name = listener_name(proxy.outbound_address, proxy.outbound_port)
    hcm = build_hcm(
        OUTBOUND,
        f"outbound_{name}",
        rds=OUTBOUND_ROUTE_NAME,
        # Lets apps use the listener as HTTP_PROXY (requests with absolute URLs).
        http_protocol_options=protocol_pb2.Http1ProtocolOptions(
            allow_absolute_url=wrappers_pb2.BoolValue(value=True)
        ),
    )
    return network_listener(
        name, proxy.outbound_address, proxy.outbound_port, HCM_FILTER, hcm, base_pb2.OUTBOUND
    )


def inbound_listener(proxy: model.Proxy, port: model.WorkloadPort) -> listener_pb2.Listener:
    """<bind>:<inbound port> -> the app on <app address>:<app port>, with an inline route."""
    name = listener_name(proxy.bind_address, port.inbound_port)
    cluster = inbound_cluster(port.app_port)
    route = rc.Route(
        name="default",
        match=rc.RouteMatch(prefix="/"),
        route=rc.RouteAction(
            cluster=cluster,
            timeout=ZERO,
            max_stream_duration=rc.RouteAction.MaxStreamDuration(
                max_stream_duration=ZERO, grpc_timeout_header_max=ZERO
            ),
        ),
    )
    hcm = build_hcm(
        INBOUND,
        f"inbound_{name}",
        route_config=route_pb2.RouteConfiguration(
            name=cluster,
            validate_clusters=wrappers_pb2.BoolValue(value=False),
            virtual_hosts=[
                rc.VirtualHost(name=f"inbound|http|{port.app_port}", domains=["*"], routes=[route])
            ],
        ),
    )
    return network_listener(
        name, proxy.bind_address, port.inbound_port, HCM_FILTER, hcm, base_pb2.INBOUND
    )


def inbound_tcp_listener(proxy: model.Proxy, port: model.WorkloadPort) -> listener_pb2.Listener:
    """<bind>:<inbound port> -> the app, as opaque TCP (an app port only TCP services reach)."""
    cluster = inbound_cluster(port.app_port)
    return network_listener(
        listener_name(proxy.bind_address, port.inbound_port),
        proxy.bind_address,
        port.inbound_port,
        TCP_PROXY_FILTER,
        tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster),
        base_pb2.INBOUND,
    )


def sidecar_listeners(
    proxy: model.Proxy, tcp_app_ports: Collection[int] = ()
) -> list[listener_pb2.Listener]:
    """The outbound HTTP proxy, and an inbound listener per app port (tcp_proxy for the
    ports only TCP services reach)."""
    inbound = [
        inbound_tcp_listener(proxy, p)
        if p.app_port in tcp_app_ports
        else inbound_listener(proxy, p)
        for p in proxy.ports
    ]
    return [outbound_listener(proxy), *inbound]
