"""Semantic checks of the resources at the mesh's edges: Gateway, Sidecar, ServiceEntry."""

from __future__ import annotations

from collections.abc import Iterator

from protos import gateway_pb2, service_entry_pb2, sidecar_pb2
from xds_server.config.checks_common import Finding, port_ok

HTTP_PROTOCOLS = {"HTTP", "HTTP2", "GRPC"}
TLS = gateway_pb2.ServerTLSSettings


def check_gateway(gw: gateway_pb2.Gateway) -> Iterator[Finding]:
    if not gw.selector:
        yield ("spec", "selector"), "required: selector (the gateway proxy's labels)"
    if not gw.servers:
        yield ("spec", "servers"), "required: at least one server"
    kinds: dict[int, set[str]] = {}
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
        if protocol == "HTTPS":
            tls = server.tls
            if tls.mode != TLS.SIMPLE:
                yield (
                    (*path, "tls", "mode"),
                    (f"TLS mode {TLS.TLSmode.Name(tls.mode)} is not supported yet (SIMPLE)"),
                )
            if tls.credential_name:
                yield (
                    (*path, "tls", "credentialName"),
                    ("not supported: use serverCertificate and privateKey files"),
                )
            for name, value in (
                ("serverCertificate", tls.server_certificate),
                ("privateKey", tls.private_key),
            ):
                if not value:
                    yield (*path, "tls", name), f"required: {name} (a file path Envoy can read)"
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


def check_service_entry(se: service_entry_pb2.ServiceEntry) -> Iterator[Finding]:
    if not se.hosts:
        yield ("spec", "hosts"), "required: at least one host"
    if not se.ports:
        yield ("spec", "ports"), "required: at least one port"
    for i, port in enumerate(se.ports):
        if not port_ok(port.number):
            yield ("spec", "ports", i, "number"), f"port {port.number} out of range 1-65535"
    resolution = service_entry_pb2.ServiceEntry.Resolution
    if se.resolution in (resolution.DNS, resolution.DNS_ROUND_ROBIN):
        for i, host in enumerate(se.hosts):
            if "*" in host and not se.endpoints:
                yield ("spec", "hosts", i), "a wildcard host cannot be resolved by DNS"
    if se.resolution == resolution.NONE and se.endpoints:
        yield ("spec", "endpoints"), "resolution NONE takes no endpoints"
    for i, endpoint in enumerate(se.endpoints):
        if not endpoint.address:
            yield ("spec", "endpoints", i, "address"), "required: endpoint address"
