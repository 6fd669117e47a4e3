"""The service registry as of one config and one set of connected workloads (pure).

Services come from Kubernetes-style Services, ServiceEntries and WorkloadEntries; their
endpoints are WorkloadEntries, ServiceEntry endpoints and connected sidecars whose labels
match. A sidecar endpoint is the sidecar's inbound port, never the app's own port, so that
traffic between workloads always passes through both sidecars.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from protos import service_entry_pb2
from translators import model
from translators.naming import fqdn, selects
from translators.peer_authentication import DISABLE, proxy_modes

# Resolutions, named after the Envoy cluster kind they produce.
EDS = "EDS"
STRICT_DNS = "STRICT_DNS"
LOGICAL_DNS = "LOGICAL_DNS"
# ServiceEntry resolution NONE: connect to the host the request names (no capture here, so
# the request's Host stands in for the original destination address).
PASSTHROUGH = "PASSTHROUGH"

HTTP_PROTOCOLS = {"http", "http2", "grpc", "grpc-web", "h2c", "auto"}
H2_PROTOCOLS = {"http2", "grpc", "h2c"}
KNOWN_PROTOCOLS = HTTP_PROTOCOLS | {"tcp", "tls", "https", "mongo", "redis", "mysql"}


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    target_port: int
    protocol: str  # lower case: http, http2, grpc, tcp, ...

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS

    @property
    def is_h2(self) -> bool:
        return self.protocol in H2_PROTOCOLS


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    labels: Mapping[str, str]
    weight: int = 1
    mtls: bool = False  # a sidecar holding its certificate: peers speak mutual TLS to it
    # The workload behind it (its proxy's workload name, or the WorkloadEntry's name) and
    # that workload's namespace: the destination_workload labels of Istio's metrics.
    workload: str = ""
    workload_namespace: str = ""


@dataclass(frozen=True)
class Service:
    hostname: str
    namespace: str
    short_name: str  # the Kubernetes name; empty for ServiceEntry hosts
    ports: tuple[ServicePort, ...]
    resolution: str = EDS
    vips: tuple[str, ...] = ()
    headless: bool = False  # a Kubernetes Service with clusterIP: None
    cidrs: bool = False  # a ServiceEntry with addresses that are networks (not in vips)
    # service port -> endpoints
    endpoints: Mapping[int, tuple[Endpoint, ...]] = field(default_factory=dict)

    @cached_property
    def port_numbers(self) -> tuple[int, ...]:
        """The ports' numbers (what port inference reads)."""
        return tuple([p.port for p in self.ports])

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)

    @property
    def default_port(self) -> ServicePort:
        """The port a Host header without ":port" means: 80 if served, else the first."""
        return self.port(80) or self.ports[0]


def port_protocol(name: str, declared: str = "") -> str:
    """Istio's rule: the declared application protocol, else the port-name prefix
    (`http-web` is http), else "auto" (Istio sniffs; our outbound proxy speaks HTTP)."""
    if declared:
        return declared.lower()
    prefix = name.split("-", 1)[0].lower()
    return prefix if prefix in KNOWN_PROTOCOLS else "auto"


@dataclass
class _Workload:
    namespace: str
    address: str
    labels: Mapping[str, str]
    ports: Mapping[str, int]  # port name -> port (WorkloadEntry)
    sidecar: model.Proxy | None = None
    weight: int = 1
    # App ports whose PeerAuthentication mode is DISABLE: peers reach them in plaintext.
    plain_ports: frozenset[int] = frozenset()
    name: str = ""  # the workload's name (Proxy.workload, or the WorkloadEntry's)

    def endpoint_port(self, port: ServicePort) -> int | None:
        if self.sidecar is not None:
            if self.sidecar.captured:  # reached at the app's own port; iptables hands it over
                return port.target_port if self.sidecar.inbound_port_for(port.target_port) else None
            return self.sidecar.inbound_port_for(port.target_port)
        return self.ports.get(port.name, port.target_port)


def can_be_endpoint(proxy: model.Proxy) -> bool:
    """Only a sidecar in front of an app (it has app ports) is an endpoint of services."""
    return proxy.role == "sidecar" and bool(proxy.ports)


def _workloads(config: model.MeshConfig, proxies: Sequence[model.Proxy]) -> list[_Workload]:
    out = [_sidecar_workload(p, config) for p in proxies if can_be_endpoint(p)]
    for res in config.of_kind(model.WORKLOAD_ENTRY):
        we = res.spec
        out.append(
            _Workload(
                res.namespace,
                we.address,
                dict(we.labels),
                dict(we.ports),
                weight=we.weight or 1,
                name=res.name,
            )
        )
    return out


class _WorkloadIndex:
    """Workloads by namespace and label, so a selector looks at few candidates."""

    def __init__(self, workloads: Sequence[_Workload]) -> None:
        self.by_label: dict[tuple[str, str, str], list[_Workload]] = {}
        for w in workloads:
            self.add(w)

    def add(self, w: _Workload) -> None:
        for key, value in w.labels.items():
            self.by_label.setdefault((w.namespace, key, value), []).append(w)

    def remove(self, w: _Workload) -> None:
        for key, value in w.labels.items():
            found = self.by_label.get((w.namespace, key, value))
            if found is not None and w in found:
                found.remove(w)

    def select(self, namespace: str, selector: Mapping[str, str]) -> list[_Workload]:
        if not selector:
            return []
        candidates = min(
            (self.by_label.get((namespace, k, v), []) for k, v in selector.items()), key=len
        )
        return [w for w in candidates if selects(selector, w.labels)]


def _first_per_number(ports: Iterable[ServicePort]) -> tuple[ServicePort, ...]:
    """One port per number (validation reports the others): two would make two clusters
    and two virtual hosts of one name, which Envoy refuses."""
    seen: dict[int, ServicePort] = {}
    for port in ports:
        seen.setdefault(port.port, port)
    return tuple(seen.values())


def _endpoint_order(e: Endpoint) -> tuple:
    return (e.address, e.port, e.weight, tuple(sorted(e.labels.items())))


def _endpoints(ports: Sequence[ServicePort], members: Sequence[_Workload]) -> dict[int, tuple]:
    """Endpoints per service port, in an order that does not depend on the members'."""
    by_port: dict[int, tuple[Endpoint, ...]] = {}
    for port in ports:
        found = []
        for w in members:
            number = w.endpoint_port(port)
            if number:
                plain = port.target_port in w.plain_ports  # its app port is DISABLE
                mtls = w.sidecar is not None and w.sidecar.mtls and not plain
                found.append(
                    Endpoint(w.address, number, w.labels, w.weight, mtls, w.name, w.namespace)
                )
        by_port[port.port] = tuple(sorted(found, key=_endpoint_order))
    return by_port


_RESOLUTIONS = {
    service_entry_pb2.ServiceEntry.STATIC: EDS,
    service_entry_pb2.ServiceEntry.DNS: STRICT_DNS,
    service_entry_pb2.ServiceEntry.DNS_ROUND_ROBIN: LOGICAL_DNS,
    service_entry_pb2.ServiceEntry.NONE: PASSTHROUGH,
}


def defined_hosts(res: model.ConfigResource) -> list[str]:
    """The hostnames a Service or ServiceEntry defines."""
    if res.kind == model.SERVICE:
        return [fqdn(res.name, res.namespace)]
    if _RESOLUTIONS.get(res.spec.resolution) is None:
        return []
    return [host.lower() for host in res.spec.hosts]


def _selector(res: model.ConfigResource) -> Mapping[str, str]:
    if res.kind == model.SERVICE:
        return res.spec.selector
    return res.spec.workload_selector.labels


def _service(res: model.ConfigResource, host: str, workloads: _WorkloadIndex) -> Service:
    """The service `res` defines for `host`, with its endpoints."""
    spec = res.spec
    if res.kind == model.SERVICE:
        ports = _first_per_number(
            ServicePort(
                p.name, p.port, p.target_port or p.port, port_protocol(p.name, p.app_protocol)
            )
            for p in spec.ports
        )
        members = workloads.select(res.namespace, spec.selector)
        return Service(
            hostname=host,
            namespace=res.namespace,
            short_name=res.name,
            ports=ports,
            vips=(spec.cluster_ip,) if spec.cluster_ip and spec.cluster_ip != "None" else (),
            headless=spec.cluster_ip == "None",
            endpoints=_endpoints(ports, members),
        )
    kind = _RESOLUTIONS[spec.resolution]
    ports = _first_per_number(
        ServicePort(p.name, p.number, p.target_port or p.number, port_protocol(p.name, p.protocol))
        for p in spec.ports
    )
    members = [
        _Workload(res.namespace, e.address, dict(e.labels), dict(e.ports), weight=e.weight or 1)
        for e in spec.endpoints
    ]
    members += workloads.select(res.namespace, spec.workload_selector.labels)
    if kind == PASSTHROUGH:
        members = []
    elif kind != EDS and not members:
        members = [_Workload(res.namespace, host, {}, {})]
    return Service(
        hostname=host,
        namespace=res.namespace,
        short_name="",
        ports=ports,
        resolution=kind,
        vips=tuple(a for a in spec.addresses if "/" not in a),
        cidrs=any("/" in a for a in spec.addresses),
        endpoints=_endpoints(ports, members),
    )


@dataclass
class Registry:
    """The services of one config and set of workloads, with what an update needs:
    which resource defines each host, and which resources select workloads."""

    services: dict[str, Service]
    proxies: tuple[model.Proxy, ...]
    definitions: dict[str, model.ConfigResource]  # host -> the resource that wins it
    selecting: dict[str, list[model.ConfigResource]]  # namespace -> resources with selectors
    index: _WorkloadIndex
    definers: dict[str, list[model.ConfigResource]]  # host -> every definition, winner first


def build_registry(config: model.MeshConfig, proxies: Sequence[model.Proxy]) -> Registry:
    """Every service in the mesh by hostname; the first definition of a hostname wins."""
    index = _WorkloadIndex(_workloads(config, proxies))
    definers: dict[str, list[model.ConfigResource]] = {}
    selecting: dict[str, list[model.ConfigResource]] = {}
    for res in (*config.of_kind(model.SERVICE), *config.of_kind(model.SERVICE_ENTRY)):
        hosts = defined_hosts(res)
        for host in hosts:
            definers.setdefault(host, []).append(res)
        if hosts and _selector(res):
            selecting.setdefault(res.namespace, []).append(res)
    definitions = {host: found[0] for host, found in definers.items()}
    services = {host: _service(res, host, index) for host, res in definitions.items()}
    return Registry(services, tuple(proxies), definitions, selecting, index, definers)


def _precedence(res: model.ConfigResource) -> tuple:
    """Services before ServiceEntries, each in Istio's config order."""
    return (res.kind != model.SERVICE, res.order_key())


def registry_after_edit(
    previous: Registry,
    removed: Sequence[model.ConfigResource],
    added: Sequence[model.ConfigResource],
) -> Registry:
    """`previous` after Services or ServiceEntries were removed and added (workloads and
    WorkloadEntries unchanged): only the hosts they define are built again."""
    definers = dict(previous.definers)
    selecting = {ns: list(found) for ns, found in previous.selecting.items()}
    hosts: set[str] = set()
    for res in removed:
        for host in defined_hosts(res):
            definers[host] = [r for r in definers.get(host, ()) if r is not res]
            hosts.add(host)
        if res in selecting.get(res.namespace, ()):
            selecting[res.namespace] = [r for r in selecting[res.namespace] if r is not res]
    for res in added:
        found = defined_hosts(res)
        for host in found:
            definers[host] = sorted([*definers.get(host, ()), res], key=_precedence)
            hosts.add(host)
        if found and _selector(res):
            selecting.setdefault(res.namespace, []).append(res)
    services = dict(previous.services)
    definitions = dict(previous.definitions)
    for host in hosts:
        if definers.get(host):
            winner = definitions[host] = definers[host][0]
            services[host] = _service(winner, host, previous.index)
        else:
            definers.pop(host, None)
            definitions.pop(host, None)
            services.pop(host, None)
    return Registry(services, previous.proxies, definitions, selecting, previous.index, definers)


def build_services(config: model.MeshConfig, proxies: Sequence[model.Proxy]) -> dict[str, Service]:
    return build_registry(config, proxies).services


def _sidecar_workload(proxy: model.Proxy, config: model.MeshConfig) -> _Workload:
    plain = frozenset(p for p, mode in proxy_modes(config, proxy).items() if mode == DISABLE)
    return _Workload(
        proxy.namespace,
        proxy.ip,
        proxy.labels,
        {},
        sidecar=proxy,
        plain_ports=plain,
        name=proxy.workload,
    )


def update_registry(
    previous: Registry, proxies: Sequence[model.Proxy], config: model.MeshConfig
) -> Registry:
    """`previous` with other workloads connected (the config unchanged): only the
    services that select a workload that came, went or changed are built again."""
    before = {p.node_id: p for p in previous.proxies if can_be_endpoint(p)}
    after = {p.node_id: p for p in proxies if can_be_endpoint(p)}
    gone = [p for n, p in before.items() if after.get(n) != p]
    came = [p for n, p in after.items() if before.get(n) != p]
    index = previous.index  # taken over: the previous registry is not updated again
    for proxy in gone:
        index.remove(_sidecar_workload(proxy, config))
    for proxy in came:
        index.add(_sidecar_workload(proxy, config))
    hosts: set[str] = set()
    for proxy in (*gone, *came):
        for res in previous.selecting.get(proxy.namespace, ()):
            if selects(_selector(res), proxy.labels):
                hosts.update(h for h in defined_hosts(res) if previous.definitions.get(h) is res)
    services = dict(previous.services)
    for host in hosts:
        services[host] = _service(previous.definitions[host], host, index)
    return Registry(
        services, tuple(proxies), previous.definitions, previous.selecting, index, previous.definers
    )
