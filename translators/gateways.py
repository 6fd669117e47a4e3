"""Ingress gateway proxies: Gateway servers as listeners, bound VirtualServices as routes
(Istio §10.1).

A gateway proxy is selected by a Gateway's `selector` (its node LABELS). Each server port
becomes one listener on the proxy's bind address; HTTP servers share one filter chain and
route config `http.<port>`, HTTPS servers terminate TLS with certificate files and get a
chain per server (SNI on its hosts) and route config `https.<port>.<server>`. VirtualServices
bind through `gateways: [ns/name]`; those naming the same host are merged in creation
order, as Istio does on gateways.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from protos import gateway_pb2
from translators import model, mtls
from translators.authorization import inbound_rbac
from translators.clusters import socket_address
from translators.credentials import SDS_PREFIX, find
from translators.hcm import build_hcm
from translators.http_filters import GATEWAY
from translators.instrument import instrument
from translators.naming import fqdn, host_matches, listener_name, selects
from translators.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Packed,
    Resources,
    ResourceSet,
    pack_all,
    to_any,
)
from translators.routes import RouteContext, gateway_ref, http_routes

if TYPE_CHECKING:
    from translators.snapshot import World

GATEWAY_ROLE = "gateway"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC"})  # Gateway server protocols
TLS = gateway_pb2.ServerTLSSettings
_TLS_VERSIONS = {
    TLS.TLS_AUTO: common_pb2.TlsParameters.TLS_AUTO,
    TLS.TLSV1_0: common_pb2.TlsParameters.TLSv1_0,
    TLS.TLSV1_1: common_pb2.TlsParameters.TLSv1_1,
    TLS.TLSV1_2: common_pb2.TlsParameters.TLSv1_2,
    TLS.TLSV1_3: common_pb2.TlsParameters.TLSv1_3,
}
ZERO = duration_pb2.Duration()


@dataclass
class _BoundServer:
    gateway: model.ConfigResource
    server: gateway_pb2.Server

    @property
    def ref(self) -> str:
        return f"{self.gateway.namespace}/{self.gateway.name}"

    @property
    def is_https(self) -> bool:
        return self.server.port.protocol.upper() == "HTTPS"


@dataclass
class _PortPlan:
    number: int
    servers: list[_BoundServer] = field(default_factory=list)


def selected_gateways(config: model.MeshConfig, proxy: model.Proxy) -> list[model.ConfigResource]:
    return [gw for gw in config.of_kind(model.GATEWAY) if selects(gw.spec.selector, proxy.labels)]


def _ports(gateways: Sequence[model.ConfigResource]) -> list[_PortPlan]:
    plans: dict[int, _PortPlan] = {}
    for gw in gateways:
        for server in gw.spec.servers:
            plan = plans.setdefault(server.port.number, _PortPlan(server.port.number))
            plan.servers.append(_BoundServer(gw, server))
    return [plans[n] for n in sorted(plans)]


def _intersect(vs_host: str, server_host: str) -> str | None:
    """The hosts a VirtualService host and a server host have in common (Istio's rule)."""
    if host_matches(server_host, vs_host):
        return vs_host
    if host_matches(vs_host, server_host):
        return server_host
    return None


def _server_host(pattern: str, vs_namespace: str) -> str | None:
    """A server host's name part if a VirtualService in `vs_namespace` may bind to it."""
    namespace, sep, name = pattern.partition("/")
    if not sep:
        return pattern.lower()
    if namespace in ("*", vs_namespace):
        return name.lower()
    return None


def _gateway_refs(vs: model.ConfigResource) -> set[str]:
    return {gateway_ref(g, vs.namespace) for g in vs.spec.gateways}


def route_config(
    name: str, servers: Sequence[_BoundServer], config: model.MeshConfig, ctx: RouteContext
) -> route_pb2.RouteConfiguration:
    """Virtual hosts for what the VirtualServices bound to `servers` route on this port."""
    port = servers[0].server.port.number
    refs = {s.ref for s in servers}
    redirect = any(s.server.tls.https_redirect for s in servers)
    routes_by_host: dict[str, list[rc.Route]] = {}
    for vs in config.of_kind(model.VIRTUAL_SERVICE):  # oldest first: merged in that order
        if not (_gateway_refs(vs) & refs):
            continue
        hosts: list[str] = []
        for raw in vs.spec.hosts:
            vs_host = fqdn(raw, vs.namespace)
            for bound in servers:
                if bound.ref not in _gateway_refs(vs):
                    continue
                for pattern in bound.server.hosts:
                    server_host = _server_host(pattern, vs.namespace)
                    common = server_host and _intersect(vs_host, server_host)
                    if common and common not in hosts:
                        hosts.append(common)
        if not hosts:
            continue
        routes = http_routes(vs.spec.http, vs.namespace, ctx, port)
        for host in hosts:
            routes_by_host.setdefault(host, []).extend(routes)
    vhosts = []
    claimed: set[str] = set()
    for host in sorted(routes_by_host):
        domains = [d for d in ([host] if host == "*" else [host, f"{host}:*"]) if d not in claimed]
        claimed.update(domains)
        vhost = rc.VirtualHost(name=f"{host}:{port}", domains=domains, routes=routes_by_host[host])
        if redirect:
            vhost.require_tls = rc.VirtualHost.ALL
        vhosts.append(vhost)
    if not vhosts:
        vhosts.append(rc.VirtualHost(name=f"blackhole:{port}", domains=["*"]))
    return route_pb2.RouteConfiguration(
        name=name, validate_clusters=wrappers_pb2.BoolValue(value=False), virtual_hosts=vhosts
    )


def _hcm(
    stat_prefix: str, route_name: str, security: Sequence[hcm_pb2.HttpFilter] = ()
) -> hcm_pb2.HttpConnectionManager:
    """`security`: the gateway workload's JWT and RBAC filters, before the router."""
    hcm = build_hcm(
        GATEWAY,
        stat_prefix,
        rds=route_name,
        use_remote_address=wrappers_pb2.BoolValue(value=True),
    )
    if security:
        router = hcm.http_filters.pop()
        hcm.http_filters.extend([*security, router])
    return hcm


def _tls_socket(tls: gateway_pb2.ServerTLSSettings) -> base_pb2.TransportSocket:
    """SIMPLE: the server's certificate (files, or the Secret `credentialName` over
    SDS, which rotates without a listener change); MUTUAL: and a client certificate
    from the CA (`caCertificates`, or the Secret's); ISTIO_MUTUAL: the gateway's own mesh
    certificate, and clients' from the mesh root."""
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    names = tls.subject_alt_names
    if tls.mode == TLS.ISTIO_MUTUAL:
        common.tls_certificate_sds_secret_configs.append(mtls.sds(mtls.DEFAULT_SECRET))
        mtls.validate_peers(common, mtls.sds(mtls.ROOT_SECRET), names)
    elif tls.credential_name:
        name = SDS_PREFIX + tls.credential_name
        common.tls_certificate_sds_secret_configs.append(mtls.sds(name))
        if tls.mode == TLS.MUTUAL:
            mtls.validate_peers(common, mtls.sds(f"{name}-cacert"), names)
    else:
        certificate = common.tls_certificates.add()
        certificate.certificate_chain.filename = tls.server_certificate
        certificate.private_key.filename = tls.private_key
        if tls.mode == TLS.MUTUAL:
            common.validation_context.trusted_ca.filename = tls.ca_certificates
            common.validation_context.match_typed_subject_alt_names.extend(mtls.san_matchers(names))
    if tls.mode != TLS.SIMPLE:  # MUTUAL, ISTIO_MUTUAL: clients present certificates
        context.require_client_certificate.value = True
    common.alpn_protocols.extend(["h2", "http/1.1"])
    common.tls_params.tls_minimum_protocol_version = _TLS_VERSIONS[
        tls.min_protocol_version or TLS.TLSV1_2
    ]
    if tls.max_protocol_version:
        common.tls_params.tls_maximum_protocol_version = _TLS_VERSIONS[tls.max_protocol_version]
    common.tls_params.cipher_suites.extend(tls.cipher_suites)
    return base_pb2.TransportSocket(
        name="envoy.transport_sockets.tls", typed_config=to_any(context)
    )


def server_name_of(host: str) -> str:
    """A Gateway server host as a TLS server name: without its namespace, lower case."""
    return (host.partition("/")[2] or host).lower()


def valid_server_name(name: str) -> bool:
    """A name or a leading-label wildcard (`*.example.com`), as Envoy takes them."""
    rest = name[2:] if name.startswith("*.") else name
    return bool(rest) and "*" not in rest


def gateway_resources(
    config: model.MeshConfig,
    proxy: model.Proxy,
    ctx: RouteContext,
    security: Sequence[hcm_pb2.HttpFilter] = (),
) -> tuple[list[listener_pb2.Listener], list[route_pb2.RouteConfiguration]]:
    """`security`: the JWT and RBAC filters of the policies that select the gateway
    (RequestAuthentication, AuthorizationPolicy), in every connection manager."""
    listeners, routes = [], []
    for plan in _ports(selected_gateways(config, proxy)):
        name = listener_name(proxy.bind_address, plan.number)
        listener = listener_pb2.Listener(
            name=name,
            address=socket_address(proxy.bind_address, plan.number),
            traffic_direction=base_pb2.OUTBOUND,
        )
        plain = [s for s in plan.servers if not s.is_https]
        if plain:
            route_name = f"http.{plan.number}"
            routes.append(route_config(route_name, plain, config, ctx))
            listener.filter_chains.append(
                listener_components_pb2.FilterChain(
                    filters=[
                        listener_components_pb2.Filter(
                            name=HCM_FILTER,
                            typed_config=to_any(_hcm(f"{name}_http", route_name, security)),
                        )
                    ]
                )
            )
        claimed: set[str] = set()
        catch_all = False
        for bound in (s for s in plan.servers if s.is_https):
            server = bound.server
            names = {server_name_of(h) for h in server.hosts}
            if plain or (not names - {"*"} and catch_all):
                continue  # Envoy refuses two chains with one match; validation reports it
            if not names - {"*"}:
                catch_all = True  # a chain without server names
            # Envoy matches server names without case, refuses partial wildcards and
            # refuses two chains that share a name: the first server keeps a name.
            sni = tuple(sorted(n for n in names - {"*"} - claimed if valid_server_name(n)))
            if names - {"*"} and not sni:
                continue
            claimed.update(sni)
            server_name = server.name or server.port.name or bound.gateway.name
            route_name = f"https.{plan.number}.{server_name}.{bound.gateway.name}"
            route_name += f".{bound.gateway.namespace}"
            routes.append(route_config(route_name, [bound], config, ctx))
            chain = listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=HCM_FILTER,
                        typed_config=to_any(_hcm(f"{name}_https", route_name, security)),
                    )
                ],
                transport_socket=_tls_socket(server.tls),
            )
            chain.filter_chain_match.server_names.extend(sni)
            listener.filter_chains.append(chain)
        if any(chain.filter_chain_match.server_names for chain in listener.filter_chains):
            listener.listener_filters.append(
                listener_components_pb2.ListenerFilter(
                    name="envoy.filters.listener.tls_inspector",
                    typed_config=to_any(tls_inspector_pb2.TlsInspector()),
                )
            )
        listeners.append(listener)
    return listeners, routes


def translate_gateway(world: World, proxy: model.Proxy) -> Resources:
    """Everything a gateway proxy receives: its listeners and routes, and every service's
    clusters and endpoints (gateways ignore Sidecar scoping)."""
    config, services, rules = world.config, world.services, world.destination_rules
    refs = frozenset(f"{gw.namespace}/{gw.name}" for gw in selected_gateways(config, proxy))
    ctx = RouteContext(services, rules, proxy.namespace, proxy.labels, gateways=refs)
    security = inbound_rbac(config, proxy, world.jwks).http
    listeners, routes = gateway_resources(config, proxy, ctx, security)
    telemetry = world.telemetry(proxy)
    collectors, collector_clusters = world.collectors(telemetry)
    instrument(listeners, telemetry, collectors, gateway=True)
    clusters: dict[str, Packed] = dict(collector_clusters)
    assignments: dict[str, Packed] = {}
    for host in sorted(services):  # what a sidecar in the gateway's namespace gets
        service_clusters, service_assignments = world.service_resources(
            host, proxy.namespace, proxy.mtls
        )
        clusters.update(service_clusters)
        assignments.update(service_assignments)
    out = {
        CLUSTER: ResourceSet(clusters),
        ENDPOINT: ResourceSet(assignments),
        LISTENER: ResourceSet(pack_all(listeners)),
        ROUTE: ResourceSet(pack_all(routes)),
    }
    if proxy.mtls:  # only a gateway bound to its identity (a token) is given keys
        secrets = credential_secrets(config, proxy)
        if secrets:
            out[SECRET] = ResourceSet(pack_all(secrets))
    return out


def credential_secrets(config: model.MeshConfig, proxy: model.Proxy) -> list[secret_pb2.Secret]:
    """The SDS secrets of the credentialNames this gateway's servers name, from Secrets in
    the gateway's namespace (as Istio reads them): `kubernetes://<name>` (certificate
    and key) and `kubernetes://<name>-cacert` (the CA, for MUTUAL). A name without a
    Secret gets none: Envoy keeps that listener warming, refusing connections."""
    out: list[secret_pb2.Secret] = []
    names = sorted(
        {
            s.tls.credential_name
            for gw in selected_gateways(config, proxy)
            for s in gw.spec.servers
            if s.tls.credential_name
        }
    )
    for name in names:
        found = find(config, proxy.namespace, name)
        if found is None:
            continue
        if found.chain and found.key:
            secret = secret_pb2.Secret(name=SDS_PREFIX + name)
            secret.tls_certificate.certificate_chain.inline_bytes = found.chain
            secret.tls_certificate.private_key.inline_bytes = found.key
            out.append(secret)
        if found.ca:
            ca = secret_pb2.Secret(name=f"{SDS_PREFIX}{name}-cacert")
            ca.validation_context.trusted_ca.inline_bytes = found.ca
            out.append(ca)
    return out
