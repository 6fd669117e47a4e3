"""The sidecar's listeners.

Without traffic capture (INTERCEPTION_MODE NONE): one outbound HTTP proxy, which the app
uses as HTTP_PROXY or sends a Host header naming the service, and one inbound listener
per app port, where other sidecars reach this workload. With capture (REDIRECT, the
iptables rules of `xds-server iptables`): Istio's virtualOutbound and virtualInbound
(captured_listeners).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Collection, Iterable, Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.filters.udp.dns_filter.v3 import dns_filter_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from translators import model
from translators.authorization import NONE as NO_RBAC
from translators.authorization import InboundRbac
from translators.clusters import socket_address
from translators.hcm import build_hcm
from translators.http_filters import INBOUND, OUTBOUND, PASSTHROUGH_CLUSTER
from translators.mtls import secure_inbound, secure_passthrough
from translators.naming import OUTBOUND_ROUTE_NAME, inbound_cluster, listener_name
from translators.peer_authentication import WORKLOAD_PORT
from translators.resources import to_any
from translators.services import PASSTHROUGH

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


def _inbound_hcm(stat_prefix: str, port: model.WorkloadPort, rbac: InboundRbac = NO_RBAC):
    """Everything to the app's port (cluster `inbound|<app port>||`), with an inline route."""
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
        stat_prefix,
        # As Istio: the app learns its mTLS peer's identity (x-forwarded-client-cert).
        forward_client_cert_details=hcm_pb2.HttpConnectionManager.APPEND_FORWARD,
        route_config=route_pb2.RouteConfiguration(
            name=cluster,
            validate_clusters=wrappers_pb2.BoolValue(value=False),
            virtual_hosts=[
                rc.VirtualHost(name=f"inbound|http|{port.app_port}", domains=["*"], routes=[route])
            ],
        ),
    )
    details = hcm.set_current_client_cert_details
    details.subject.value, details.uri, details.dns = True, True, True
    if rbac.http:  # AuthorizationPolicy, before the router
        router = hcm.http_filters.pop()
        hcm.http_filters.extend([*rbac.http, router])
    return hcm


def inbound_listener(
    proxy: model.Proxy, port: model.WorkloadPort, rbac: InboundRbac = NO_RBAC
) -> listener_pb2.Listener:
    """<bind>:<inbound port> -> the app on <app address>:<app port>, with an inline route."""
    name = listener_name(proxy.bind_address, port.inbound_port)
    hcm = _inbound_hcm(f"inbound_{name}", port, rbac)
    return network_listener(
        name, proxy.bind_address, port.inbound_port, HCM_FILTER, hcm, base_pb2.INBOUND
    )


def inbound_tcp_listener(
    proxy: model.Proxy, port: model.WorkloadPort, rbac: InboundRbac = NO_RBAC
) -> listener_pb2.Listener:
    """<bind>:<inbound port> -> the app, as opaque TCP (an app port only TCP services reach)."""
    cluster = inbound_cluster(port.app_port)
    listener = network_listener(
        listener_name(proxy.bind_address, port.inbound_port),
        proxy.bind_address,
        port.inbound_port,
        TCP_PROXY_FILTER,
        tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster),
        base_pb2.INBOUND,
    )
    _guard(listener.filter_chains[0], rbac)
    return listener


def _guard(chain: listener_components_pb2.FilterChain, rbac: InboundRbac) -> None:
    """AuthorizationPolicy on a TCP chain: network RBAC before tcp_proxy."""
    if rbac.network:
        filters = list(chain.filters)
        del chain.filters[:]
        chain.filters.extend([*rbac.network, *filters])


def sidecar_listeners(
    proxy: model.Proxy,
    tcp_app_ports: Collection[int] = (),
    modes: Mapping[int, str] | None = None,
    rbac: InboundRbac = NO_RBAC,
) -> list[listener_pb2.Listener]:
    """The outbound HTTP proxy, and an inbound listener per app port (tcp_proxy for the
    ports only TCP services reach), each with its PeerAuthentication mode (`modes`, by
    app port; PERMISSIVE when not given)."""
    inbound = []
    for port in proxy.ports:
        if port.app_port in tcp_app_ports:
            listener = inbound_tcp_listener(proxy, port, rbac)
        else:
            listener = inbound_listener(proxy, port, rbac)
        mode = (modes or {}).get(port.app_port, "PERMISSIVE")
        secure_inbound(listener, lambda chain, mode=mode: mode, proxy.mtls)
        inbound.append(listener)
    return [outbound_listener(proxy), *inbound]


# Istio's capture-mode names (reference/istio-mapping.md §1, §5.2).
VIRTUAL_OUTBOUND, VIRTUAL_INBOUND = "virtualOutbound", "virtualInbound"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
INBOUND_PASSTHROUGH_CLUSTER = "InboundPassthroughClusterIpv4"
INBOUND_CAPTURE_PORT = 15006
ORIGINAL_DST_FILTER = "envoy.filters.listener.original_dst"
# Ports of the sidecar's own listeners and admin: never a per-port outbound listener.
SIDECAR_PORTS = frozenset({15000, 15001, 15006, 15008, 15020, 15021, 15090})


def _tcp_chain(name: str, cluster: str, port: int | None = None):
    chain = listener_components_pb2.FilterChain(
        name=name,
        filters=[
            listener_components_pb2.Filter(
                name=TCP_PROXY_FILTER,
                typed_config=to_any(tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)),
            )
        ],
    )
    if port is not None:
        chain.filter_chain_match.destination_port.value = port
    return chain


def captured_listeners(
    proxy: model.Proxy,
    http_ports: Collection[int],
    tcp_services: Iterable[tuple[str, int, tcp_proxy_pb2.TcpProxy]],
    tcp_app_ports: Collection[int],
    allow_any: bool,
    modes: Mapping[int, str] | None = None,
    rbac: InboundRbac = NO_RBAC,
) -> list[listener_pb2.Listener]:
    """A captured sidecar's listeners, as Istio builds them: virtualOutbound on 15001
    hands each connection to the listener of its original destination (HTTP service
    ports, `0.0.0.0_<port>`, route by Host through the route configuration `<port>`; a
    TCP service port, `<address>_<port>` for each of `tcp_services`' addresses, goes to
    that service, and takes precedence over the port's wildcard listener); what no
    listener takes goes to PassthroughCluster (ALLOW_ANY) or BlackHoleCluster.
    virtualInbound on 15006 restores the original destination and serves each app port
    by its own filter chain; other ports pass through to the pod."""
    outbound = listener_pb2.Listener(
        name=VIRTUAL_OUTBOUND,
        address=socket_address("0.0.0.0", proxy.outbound_port),
        use_original_dst=wrappers_pb2.BoolValue(value=True),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[
            _tcp_chain(f"{VIRTUAL_OUTBOUND}-blackhole", BLACKHOLE_CLUSTER, proxy.outbound_port)
        ],
        default_filter_chain=_tcp_chain(
            f"{VIRTUAL_OUTBOUND}-catchall-tcp",
            PASSTHROUGH_CLUSTER if allow_any else BLACKHOLE_CLUSTER,
        ),
    )
    listeners = [outbound]
    for port in sorted(set(http_ports) - SIDECAR_PORTS):
        name = listener_name("0.0.0.0", port)
        # Istio's route configuration per port, named by it (routes.port_route_configs).
        hcm = build_hcm(OUTBOUND, f"outbound_{name}", rds=str(port))
        listener = network_listener(name, "0.0.0.0", port, HCM_FILTER, hcm, base_pb2.OUTBOUND)
        listener.bind_to_port.value = False  # reached only through virtualOutbound
        listeners.append(listener)
    taken: set[str] = set()
    for address, port, config in tcp_services:
        name = listener_name(address, port)
        if name in taken:
            continue  # two services at one address (more hosts than addresses): the first
        taken.add(name)
        listener = network_listener(
            name, address, port, TCP_PROXY_FILTER, config, base_pb2.OUTBOUND
        )
        listener.bind_to_port.value = False
        listeners.append(listener)
    inbound = listener_pb2.Listener(
        name=VIRTUAL_INBOUND,
        address=socket_address("0.0.0.0", INBOUND_CAPTURE_PORT),
        traffic_direction=base_pb2.INBOUND,
        listener_filters=[
            listener_components_pb2.ListenerFilter(
                name=ORIGINAL_DST_FILTER, typed_config=to_any(original_dst_pb2.OriginalDst())
            )
        ],
        filter_chains=[
            _tcp_chain(f"{VIRTUAL_INBOUND}-blackhole", BLACKHOLE_CLUSTER, INBOUND_CAPTURE_PORT)
        ],
        default_filter_chain=_tcp_chain(VIRTUAL_INBOUND, INBOUND_PASSTHROUGH_CLUSTER),
    )
    for port in proxy.ports:
        cluster = inbound_cluster(port.app_port)
        if port.app_port in tcp_app_ports:
            chain = _tcp_chain(cluster, cluster, port.app_port)
            _guard(chain, rbac)
        else:
            hcm = _inbound_hcm(f"inbound_0.0.0.0_{port.app_port}", port, rbac)
            chain = listener_components_pb2.FilterChain(
                name=cluster,
                filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=to_any(hcm))],
            )
            chain.filter_chain_match.destination_port.value = port.app_port
        inbound.filter_chains.append(chain)
    # Ports no service declares pass through to the app: AuthorizationPolicy guards them
    # too, and the workload's PeerAuthentication mode (STRICT refuses plaintext there).
    _guard(inbound.default_filter_chain, rbac)
    secure_passthrough(inbound, (modes or {}).get(WORKLOAD_PORT, "PERMISSIVE"), proxy.mtls)
    by_cluster = {inbound_cluster(p.app_port): p.app_port for p in proxy.ports}
    secure_inbound(  # each app port's chain by its mode; passthrough and 15006 as they are
        inbound,
        lambda chain: (
            (modes or {}).get(by_cluster[chain.name], "PERMISSIVE")
            if chain.name in by_cluster
            else None
        ),
        proxy.mtls,
    )
    listeners.append(inbound)
    return listeners


def captured_clusters(connect_timeout: duration_pb2.Duration) -> list[cluster_pb2.Cluster]:
    """What captured traffic no service takes goes to: the original destination (from
    the pod, or into it from 127.0.0.6, which the capture rules let through), or
    nowhere."""
    passthrough = cluster_pb2.Cluster(
        name=PASSTHROUGH_CLUSTER,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=connect_timeout,
    )
    inbound = cluster_pb2.Cluster(
        name=INBOUND_PASSTHROUGH_CLUSTER,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=connect_timeout,
    )
    inbound.upstream_bind_config.source_address.address = "127.0.0.6"
    inbound.upstream_bind_config.source_address.port_value = 0
    return [passthrough, inbound, blackhole_cluster(connect_timeout)]


def blackhole_cluster(connect_timeout: duration_pb2.Duration) -> cluster_pb2.Cluster:
    """A cluster with no hosts: where refused traffic goes."""
    return cluster_pb2.Cluster(
        name=BLACKHOLE_CLUSTER, type=cluster_pb2.Cluster.STATIC, connect_timeout=connect_timeout
    )


DNS_PORT = 15053
DNS_FILTER = "envoy.filters.udp.dns_filter"


AUTO_ADDRESSES = "240.240.0.0/16"  # Istio's auto-allocation range; mesh autoAllocateRange


@functools.lru_cache(maxsize=1 << 16)  # host names come and go over a server's life
def _slot(host: str, size: int) -> int:
    digest = hashlib.blake2b(host.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % size


def auto_address(host: str, network: str = AUTO_ADDRESSES) -> str:
    """The address a host without one prefers: in `network`, by a hash of its name (so
    the same across restarts and config changes); allocate_addresses gives it that one
    unless another host took it first."""
    net = ipaddress.ip_network(network)
    return str(net[1 + _slot(host, net.num_addresses - 2)])


def allocate_addresses(hosts: Iterable[str], network: str = AUTO_ADDRESSES) -> dict[str, str]:
    """An address for each host, as Istio allocates them for DNS capture: each its
    auto_address, and where two hosts want one, the one first by name keeps it and the
    other takes the next free one. So the result depends on the set of names alone, and
    a new host can move others only within the run of taken addresses its own falls in
    (rare in a sparse range: a /16 holds 1000 hosts with few neighbours). Hosts share
    addresses only when there are more hosts than addresses."""
    net = ipaddress.ip_network(network)
    size = net.num_addresses - 2
    taken: set[int] = set()
    out: dict[str, str] = {}
    for slot, host in sorted((_slot(h, size), h) for h in hosts):
        if len(taken) < size:
            while slot in taken:
                slot = (slot + 1) % size
            taken.add(slot)
        out[host] = str(net[1 + slot])
    return out


def needs_address(host: str, service) -> bool:
    """A host captured sidecars reach by an allocated address: no address of its own,
    not headless (its name resolves to its pods), not a wildcard, not a ServiceEntry
    with network addresses or resolution NONE (as Istio: its name resolves upstream to
    the address the app means to reach, which no allocated one could stand for)."""
    return not (
        "*" in host
        or service.headless
        or service.cidrs
        or service.resolution == PASSTHROUGH
        or any("/" not in a for a in service.vips)
    )


def service_addresses(host: str, service, allocated: Mapping[str, str]) -> tuple[str, ...]:
    """Where a captured app reaches a service: its virtual IPs, or its allocated address."""
    own = tuple(a for a in service.vips if "/" not in a)
    if own:
        return own
    return (allocated[host],) if host in allocated else ()


def dns_names(
    services: Mapping, proxy_namespace: str, allocated: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    """Mesh names -> their addresses, as Istio's DNS proxy answers them: a Kubernetes
    Service by its full name, `name.ns.svc`, `name.ns`, and within its namespace `name`;
    a ServiceEntry host by itself. A host without addresses has its `allocated` one;
    headless Services and wildcard hosts are left to the upstream resolver."""
    names: dict[str, tuple[str, ...]] = {}
    for host, service in sorted(services.items()):
        if "*" in host or service.headless:
            continue
        addresses = service_addresses(host, service, allocated)
        if not addresses:
            continue
        names[host] = addresses
        if service.short_name:
            short = f"{service.short_name}.{service.namespace}"
            names[f"{short}.svc"] = addresses
            names[short] = addresses
            if service.namespace == proxy_namespace:
                names[service.short_name] = addresses
    return names


def dns_listener(names: Mapping[str, Collection[str]]) -> listener_pb2.Listener:
    """A UDP listener on 127.0.0.1:15053 (where the capture rules send the app's DNS)
    answering mesh names from an inline table; other names go to the sidecar's own
    resolver (its host's resolv.conf)."""
    config = dns_filter_pb2.DnsFilterConfig(stat_prefix="dns")
    table = config.server_config.inline_dns_table
    for name, addresses in names.items():
        domain = table.virtual_domains.add(name=name)
        domain.endpoint.address_list.address.extend(addresses)
        domain.answer_ttl.seconds = 30
    config.client_config.resolver_timeout.seconds = 5
    config.client_config.max_pending_lookups = 256
    listener = listener_pb2.Listener(
        name="dns",
        address=socket_address("127.0.0.1", DNS_PORT),
        traffic_direction=base_pb2.OUTBOUND,
        listener_filters=[
            listener_components_pb2.ListenerFilter(name=DNS_FILTER, typed_config=to_any(config))
        ],
    )
    listener.address.socket_address.protocol = address_pb2.SocketAddress.UDP
    return listener
