"""TCP service ports: VirtualService `tcp` rules as tcp_proxy filters (Istio §3).

Without traffic capture, an app reaches a TCP service through its sidecar's outbound
address at the service's port (like a local ambassador): `127.0.0.1:3306` for a mysql
Service on 3306. Plain TCP carries no host name, so one port means one service on a
sidecar: when two visible services share a TCP port, the first by host name gets it (the
config check warns). With capture, each TCP service port is reached at the service's own
address (its virtual IP), as in Istio, so services may share a port. On the serving
side, an app port that only TCP service ports target gets a tcp_proxy inbound listener
instead of an HTTP one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from protos import virtual_service_pb2 as vs_pb2
from translators import model
from translators.listeners import TCP_PROXY_FILTER, network_listener
from translators.memo import PerObject
from translators.naming import has_labels, listener_name, outbound_cluster
from translators.routes import RouteContext, gateway_ref, resolve_destination
from translators.services import Service
from translators.traffic_policy import effective_policy, find_subset

# Ports Istio reserves for the proxy itself (admin, outbound, inbound, agent, stats).
PROXY_PORTS = frozenset({15000, 15001, 15004, 15006, 15008, 15020, 15021, 15053, 15090})


@dataclass(frozen=True)
class TcpRoute:
    """One outbound TCP service port and the tcp_proxy that serves it."""

    port: int
    host: str
    proxy: tcp_proxy_pb2.TcpProxy


def _applies(match: vs_pb2.L4MatchAttributes, port: int, ctx: RouteContext, ns: str) -> bool:
    if match.port and match.port != port:
        return False
    if match.gateways:
        return any(gateway_ref(g, ns) in ctx.gateways for g in match.gateways)
    if not has_labels(ctx.proxy_labels, match.source_labels):
        return False
    return not (match.source_namespace and match.source_namespace != ctx.proxy_ns)


def _rule_for(vs: model.ConfigResource | None, port: int, ctx: RouteContext):
    """The first `tcp` rule that applies to this port and proxy (no match: always)."""
    if vs is None:
        return None
    for rule in vs.spec.tcp:
        if not rule.match or any(_applies(m, port, ctx, vs.namespace) for m in rule.match):
            return rule
    return None


def tcp_proxy(
    service: Service, port: int, vs: model.ConfigResource | None, ctx: RouteContext
) -> tcp_proxy_pb2.TcpProxy:
    rule = _rule_for(vs, port, ctx)
    out = tcp_proxy_pb2.TcpProxy()
    destinations = list(rule.route) if rule is not None else []
    targets = []
    for dest in destinations:
        if len(destinations) > 1 and dest.weight <= 0:
            continue
        host, dest_port, subset = resolve_destination(
            dest.destination, vs.namespace, ctx.services, port
        )
        targets.append((outbound_cluster(dest_port, host, subset), dest.weight, host, subset))
    if not targets:
        targets = [(outbound_cluster(port, service.hostname), 0, service.hostname, "")]
    if len(targets) == 1:
        out.cluster = targets[0][0]
        out.stat_prefix = targets[0][0]
    else:
        out.stat_prefix = f"{vs.name}.{vs.namespace}"
        for name, weight, _, _ in targets:
            out.weighted_clusters.clusters.append(
                tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=name, weight=weight)
            )
    # DestinationRule settings that live on the tcp_proxy (of the first destination).
    _, _, host, subset = targets[0]
    target = ctx.services.get(host)
    rule_dr = ctx.rules.lookup(host, ctx.proxy_ns, target.namespace if target else ctx.proxy_ns)
    policy = effective_policy(rule_dr, find_subset(rule_dr, subset), port)
    tcp = policy.connection_pool.tcp
    if tcp.HasField("idle_timeout"):
        out.idle_timeout.CopyFrom(tcp.idle_timeout)
    if tcp.HasField("max_connection_duration"):
        out.max_downstream_connection_duration.CopyFrom(tcp.max_connection_duration)
    hashing = policy.load_balancer.consistent_hash
    if policy.load_balancer.HasField("consistent_hash") and hashing.use_source_ip:
        out.hash_policy.add().source_ip.SetInParent()
    return out


def outbound_tcp_routes(
    ctx: RouteContext, owners: Mapping[str, model.ConfigResource]
) -> list[TcpRoute]:
    """A tcp_proxy per TCP port of each visible service, in host order (a captured
    sidecar reaches each at its service's address; an uncaptured one has one listener
    per port, see claimed_ports)."""
    routes: list[TcpRoute] = []
    for host in sorted(ctx.services):
        if "*" in host:
            continue
        service = ctx.services[host]
        for port in service.ports:
            if not port.is_http:
                routes.append(
                    TcpRoute(port.port, host, tcp_proxy(service, port.port, owners.get(host), ctx))
                )
    return routes


def claimed_ports(routes: list[TcpRoute]) -> list[TcpRoute]:
    """One route per port, by port: the first host claims a port."""
    claimed: dict[int, TcpRoute] = {}
    for route in routes:
        claimed.setdefault(route.port, route)
    return [claimed[p] for p in sorted(claimed)]


def outbound_tcp_listeners(
    proxy: model.Proxy, routes: list[TcpRoute]
) -> list[listener_pb2.Listener]:
    """Listeners on the sidecar's outbound address, one per TCP port (claimed_ports),
    except on ports it already uses."""
    taken = {proxy.outbound_port, *PROXY_PORTS}
    if proxy.outbound_address == proxy.bind_address or proxy.bind_address in ("0.0.0.0", ""):
        taken |= {p.inbound_port for p in proxy.ports}
    if proxy.outbound_address == proxy.app_address:
        taken |= {p.app_port for p in proxy.ports}
    return [
        network_listener(
            listener_name(proxy.outbound_address, r.port),
            proxy.outbound_address,
            r.port,
            TCP_PROXY_FILTER,
            r.proxy,
            base_pb2.OUTBOUND,
        )
        for r in claimed_ports(routes)
        if r.port not in taken
    ]


PortUse = dict[str, dict[str, frozenset[tuple[int, bool]]]]


def port_uses(services: Mapping[str, Service]) -> PortUse:
    """address -> host -> (endpoint port, reached by HTTP) for every endpoint: built once
    per registry, so each proxy's inbound listeners need no scan of every service."""
    uses: dict[str, dict[str, set[tuple[int, bool]]]] = {}
    for host, service in services.items():
        for address, found in _host_uses(service).items():
            uses.setdefault(address, {})[host] = found
    return uses  # type: ignore[return-value]


def _derive_host_uses(service: Service) -> dict[str, frozenset[tuple[int, bool]]]:
    found: dict[str, set[tuple[int, bool]]] = {}
    for port in service.ports:
        for endpoint in service.endpoints.get(port.port, ()):
            found.setdefault(endpoint.address, set()).add((endpoint.port, port.is_http))
    return {address: frozenset(uses) for address, uses in found.items()}


# Per service: services are kept from push to push while they stay the same.
_host_uses = PerObject(_derive_host_uses)


def update_port_uses(
    previous: PortUse, before: Mapping[str, Service], after: Mapping[str, Service], hosts
) -> PortUse:
    """`previous` with the endpoints of `hosts` taken from `after` instead of `before`."""
    uses = dict(previous)
    for host in hosts:
        old = before.get(host)
        for address in _host_uses(old) if old is not None else ():
            entry = uses[address] = dict(uses.get(address, {}))
            entry.pop(host, None)
            if not entry:
                del uses[address]
        new = after.get(host)
        for address, found in (_host_uses(new) if new is not None else {}).items():
            entry = uses[address] = dict(uses.get(address, {}))
            entry[host] = found
    return uses


def tcp_app_ports(proxy: model.Proxy, uses: PortUse) -> set[int]:
    """App ports of `proxy` that only TCP service ports reach (so inbound is tcp_proxy)."""
    # A captured workload's endpoints are its app ports (15006 takes them); otherwise
    # they are its sidecar's inbound ports.
    to_app = {p.app_port if proxy.captured else p.inbound_port: p.app_port for p in proxy.ports}
    protocols: dict[int, set[bool]] = {}
    for found in uses.get(proxy.ip, {}).values():
        for endpoint_port, is_http in found:
            if endpoint_port in to_app:
                protocols.setdefault(to_app[endpoint_port], set()).add(is_http)
    return {app for app, kinds in protocols.items() if kinds == {False}}
