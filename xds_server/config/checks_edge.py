"""Semantic checks of the resources at the mesh's edges: Gateway, Sidecar, ServiceEntry and
WorkloadEntry (what their addresses and ports become in Envoy endpoints and listeners)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from protos import gateway_pb2, service_entry_pb2, sidecar_pb2, workload_entry_pb2
from translators.gateways import HTTP_PROTOCOLS, server_name_of, valid_server_name
from translators.naming import is_ip
from translators.services import HTTP_PROTOCOLS as HTTP_PORT_PROTOCOLS
from translators.services import port_protocol
from translators.tcp_routes import PROXY_PORTS
from xds_server.config.checks_common import Finding, enabled, port_ok
from xds_server.config.checks_envoy import UNIX_PREFIX
from xds_server.config.yaml_lines import Path

TLS = gateway_pb2.ServerTLSSettings
Resolution = service_entry_pb2.ServiceEntry.Resolution
# The ports Istio reserves for the proxy itself, and what uses each.
RESERVED_PORTS = {
    15000: "Envoy's admin interface",
    15001: "the sidecar's outbound listener",
    15004: "the Istio agent's debug port",
    15006: "the sidecar's inbound listener",
    15008: "the HBONE tunnel",
    15009: "HBONE on secure networks",
    15020: "merged Prometheus telemetry",
    15021: "health checks",
    15053: "the DNS proxy",
    15090: "Envoy's Prometheus telemetry",
}
ADMIN_PORT = 15000


_TERMINATED = (TLS.SIMPLE, TLS.MUTUAL, TLS.ISTIO_MUTUAL)


def _server_tls(tls, path) -> Iterator[Finding]:
    """What each terminating mode needs: a certificate from files or a Secret
    (credentialName); MUTUAL a CA too; ISTIO_MUTUAL the gateway's mesh certificate."""
    if tls.mode not in _TERMINATED:
        yield (
            (*path, "mode"),
            f"TLS mode {TLS.TLSmode.Name(tls.mode)} is not supported yet "
            "(SIMPLE, MUTUAL and ISTIO_MUTUAL are)",
        )
        return
    files = (("serverCertificate", tls.server_certificate), ("privateKey", tls.private_key))
    if tls.mode == TLS.ISTIO_MUTUAL:
        for name, value in (*files, ("caCertificates", tls.ca_certificates)):
            if value:
                yield (*path, name), "not with ISTIO_MUTUAL: the gateway's mesh certificate is used"
        if tls.credential_name:
            yield (*path, "credentialName"), "not with ISTIO_MUTUAL"
        return
    if tls.credential_name:
        for name, value in files:
            if value:
                yield (*path, name), "give credentialName or certificate files, not both"
        return
    for name, value in files:
        if not value:
            yield (
                (*path, name),
                f"required: {name} (a file path Envoy can read), or credentialName",
            )
    if tls.mode == TLS.MUTUAL and not tls.ca_certificates:
        yield (*path, "caCertificates"), "required with MUTUAL: the CA client certificates chain to"


def check_gateway(gw: gateway_pb2.Gateway) -> Iterator[Finding]:
    if not gw.selector:
        yield ("spec", "selector"), "required: selector (the gateway proxy's labels)"
    if not gw.servers:
        yield ("spec", "servers"), "required: at least one server"
    kinds: dict[int, set[str]] = {}
    names: dict[tuple[int, str], tuple[int, int]] = {}
    for i, server in enumerate(gw.servers):
        path = ("spec", "servers", i)
        port = server.port
        if not port_ok(port.number):
            yield (*path, "port", "number"), f"port {port.number} out of range 1-65535"
        protocol = port.protocol.upper()
        if protocol not in HTTP_PROTOCOLS | {"HTTPS"}:
            yield (
                (*path, "port", "protocol"),
                (f"protocol {port.protocol!r} is not supported yet (HTTP, HTTP2, GRPC, HTTPS)"),
            )
        kinds.setdefault(port.number, set()).add("HTTPS" if protocol == "HTTPS" else "HTTP")
        if len(kinds[port.number]) > 1:
            yield (
                (*path, "port", "number"),
                (f"HTTP and HTTPS servers cannot share port {port.number}"),
            )
        if not server.hosts:
            yield (*path, "hosts"), "required: at least one host"
        for j, host in enumerate(server.hosts):
            if host.count("/") > 1 or not host.rpartition("/")[2]:
                yield (*path, "hosts", j), f"invalid host {host!r} (use host or namespace/host)"
                continue
            name = server_name_of(host)
            if name != "*" and not valid_server_name(name):
                yield (
                    (*path, "hosts", j),
                    f"invalid host {host!r}: a wildcard may only be the whole first label "
                    "(*.example.com) or the whole host (*)",
                )
            if protocol == "HTTPS":
                other = names.setdefault((port.number, name), (i, j))
                if other != (i, j):
                    yield (
                        (*path, "hosts", j),
                        f"host {host!r} is also served over TLS on port {port.number} by "
                        f"servers[{other[0]}].hosts[{other[1]}] (names match without case); "
                        "Envoy cannot tell them apart",
                    )
        if protocol == "HTTPS":
            yield from _server_tls(server.tls, (*path, "tls"))
        elif server.HasField("tls") and (server.tls.mode or server.tls.server_certificate):
            yield (*path, "tls"), "only httpsRedirect applies to a plain HTTP server"


def check_sidecar(sidecar: sidecar_pb2.Sidecar) -> Iterator[Finding]:
    for i, egress in enumerate(sidecar.egress):
        if not egress.hosts:
            yield ("spec", "egress", i, "hosts"), "required: at least one host"
        for j, host in enumerate(egress.hosts):
            namespace, sep, name = host.partition("/")
            if not sep or not namespace or not name or "/" in name:
                yield (
                    ("spec", "egress", i, "hosts", j),
                    (f"invalid host {host!r}: use namespace/dnsName (., * or a namespace)"),
                )


def gateway_warnings(gw: gateway_pb2.Gateway) -> Iterator[Finding]:
    """A server on the admin port: the gateway's listener cannot bind beside its admin."""
    if not enabled("reserved-ports"):
        return
    for i, server in enumerate(gw.servers):
        if server.port.number == ADMIN_PORT:
            yield (
                ("spec", "servers", i, "port", "number"),
                f"port {ADMIN_PORT} is the admin port of the bootstraps xds-server writes: "
                "unless this gateway's admin moved (--admin-port), its listener cannot bind",
            )


def reserved_port_warnings(number: int, protocol: str, path: Path) -> Iterator[Finding]:
    """A TCP service port the sidecar uses itself (HTTP ports share the outbound listener
    and open none): translation skips its listener, so the user must hear why."""
    if not enabled("reserved-ports") or protocol in HTTP_PORT_PROTOCOLS:
        return
    role = RESERVED_PORTS.get(number)
    if role is None:
        return
    if number in PROXY_PORTS:
        yield (
            path,
            f"TCP port {number} is reserved for {role}: sidecars open no listener for this "
            "service there, so apps cannot reach it through their sidecar; use another port",
        )
    else:
        yield path, f"TCP port {number} is reserved by Istio for {role}; use another port"


def endpoint_ports(ports: Mapping[str, int], path: Path) -> Iterator[Finding]:
    """WorkloadEntry ports become endpoint ports: Envoy's SocketAddress allows 0-65535."""
    if enabled("endpoint-port"):
        for name, number in sorted(ports.items()):
            if number > 65535:
                yield (*path, name), f"port {number} out of range 1-65535"


def unix_address(address: str, path: Path) -> Iterator[Finding]:
    """Istio allows unix:// endpoints; the translation only writes TCP socket addresses,
    which Envoy refuses (STATIC, EDS) or cannot resolve (DNS) for such a path."""
    if enabled("endpoint-address") and address.startswith(UNIX_PREFIX):
        yield path, "unix domain socket addresses are not supported (TCP addresses only)"


def check_workload_entry(we: workload_entry_pb2.WorkloadEntry) -> Iterator[Finding]:
    if not we.address:
        yield ("spec", "address"), "required: address"
    yield from unix_address(we.address, ("spec", "address"))
    yield from endpoint_ports(we.ports, ("spec", "ports"))


def _endpoints(se: service_entry_pb2.ServiceEntry) -> Iterator[Finding]:
    for i, endpoint in enumerate(se.endpoints):
        path = ("spec", "endpoints", i, "address")
        address = endpoint.address
        if not address:
            yield path, "required: endpoint address"
        elif address.startswith(UNIX_PREFIX):
            yield from unix_address(address, path)
        elif (
            se.resolution == Resolution.STATIC
            and enabled("endpoint-address")
            and not is_ip(address)
        ):
            yield (
                path,
                f"resolution STATIC needs an IP address: Envoy refuses {address!r} as a "
                "static endpoint (malformed IP address); use resolution DNS for host names",
            )
        yield from endpoint_ports(endpoint.ports, ("spec", "endpoints", i, "ports"))
    if (
        se.resolution == Resolution.DNS_ROUND_ROBIN
        and len(se.endpoints) > 1
        and enabled("dns-round-robin")
    ):
        yield (
            ("spec", "endpoints"),
            "resolution DNS_ROUND_ROBIN takes at most one endpoint (Envoy's LOGICAL_DNS "
            "cluster has exactly one); use resolution DNS",
        )


def service_entry_warnings(se: service_entry_pb2.ServiceEntry) -> Iterator[Finding]:
    for i, port in enumerate(se.ports):
        protocol = port_protocol(port.name, port.protocol)
        yield from reserved_port_warnings(port.number, protocol, ("spec", "ports", i, "number"))


def check_service_entry(se: service_entry_pb2.ServiceEntry) -> Iterator[Finding]:
    if not se.hosts:
        yield ("spec", "hosts"), "required: at least one host"
    if enabled("service-entry-hosts"):
        for i, host in enumerate(se.hosts):
            if not host.strip():
                yield ("spec", "hosts", i), "host must not be empty"
    if not se.ports:
        yield ("spec", "ports"), "required: at least one port"
    numbers: dict[int, int] = {}
    names: dict[str, int] = {}
    for i, port in enumerate(se.ports):
        if not port_ok(port.number):
            yield ("spec", "ports", i, "number"), f"port {port.number} out of range 1-65535"
        if port.number in numbers:
            yield (
                ("spec", "ports", i, "number"),
                f"duplicate port {port.number} (also ports[{numbers[port.number]}])",
            )
        numbers.setdefault(port.number, i)
        if port.name and port.name in names:
            yield (
                ("spec", "ports", i, "name"),
                f'duplicate port name "{port.name}" (also ports[{names[port.name]}])',
            )
        names.setdefault(port.name, i)
        if port.target_port > 65535 and enabled("endpoint-port"):
            yield (
                ("spec", "ports", i, "targetPort"),
                f"port {port.target_port} out of range 1-65535",
            )
    resolution = service_entry_pb2.ServiceEntry.Resolution
    if se.resolution in (resolution.DNS, resolution.DNS_ROUND_ROBIN):
        for i, host in enumerate(se.hosts):
            if "*" in host and not se.endpoints:
                yield ("spec", "hosts", i), "a wildcard host cannot be resolved by DNS"
    if se.resolution == resolution.NONE and se.endpoints:
        yield ("spec", "endpoints"), "resolution NONE takes no endpoints"
    yield from _endpoints(se)
