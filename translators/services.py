"""The service registry as of one config and one set of connected workloads (pure).

Services come from Kubernetes-style Services, ServiceEntries and WorkloadEntries; their
endpoints are WorkloadEntries, ServiceEntry endpoints and connected sidecars whose labels
match. A sidecar endpoint is the sidecar's inbound port, never the app's own port, so that
traffic between workloads always passes through both sidecars.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from protos import service_entry_pb2
from translators import model
from translators.naming import fqdn, selects

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


@dataclass(frozen=True)
class Service:
    hostname: str
    namespace: str
    short_name: str  # the Kubernetes name; empty for ServiceEntry hosts
    ports: tuple[ServicePort, ...]
    resolution: str = EDS
    vips: tuple[str, ...] = ()
    # service port -> endpoints
    endpoints: Mapping[int, tuple[Endpoint, ...]] = field(default_factory=dict)

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

    def endpoint_port(self, port: ServicePort) -> int | None:
        if self.sidecar is not None:
            return self.sidecar.inbound_port_for(port.target_port)
        return self.ports.get(port.name, port.target_port)


def can_be_endpoint(proxy: model.Proxy) -> bool:
    """Only a sidecar in front of an app (it has app ports) is an endpoint of services."""
    return proxy.role == "sidecar" and bool(proxy.ports)


def _workloads(config: model.MeshConfig, proxies: Sequence[model.Proxy]) -> list[_Workload]:
    out = [
        _Workload(p.namespace, p.ip, p.labels, {}, sidecar=p) for p in proxies if can_be_endpoint(p)
    ]
    for res in config.of_kind(model.WORKLOAD_ENTRY):
        we = res.spec
        out.append(
            _Workload(
                res.namespace, we.address, dict(we.labels), dict(we.ports), weight=we.weight or 1
            )
        )
    return out


class _WorkloadIndex:
    """Workloads by namespace and label, so a selector looks at few candidates."""

    def __init__(self, workloads: Sequence[_Workload]) -> None:
        self.by_label: dict[tuple[str, str, str], list[_Workload]] = {}
        for w in workloads:
            for key, value in w.labels.items():
                self.by_label.setdefault((w.namespace, key, value), []).append(w)

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


def _endpoints(ports: Sequence[ServicePort], members: Sequence[_Workload]) -> dict[int, tuple]:
    by_port: dict[int, tuple[Endpoint, ...]] = {}
    for port in ports:
        found = []
        for w in members:
            number = w.endpoint_port(port)
            if number:
                found.append(Endpoint(w.address, number, w.labels, w.weight))
        by_port[port.port] = tuple(sorted(found, key=lambda e: (e.address, e.port)))
    return by_port


def build_services(config: model.MeshConfig, proxies: Sequence[model.Proxy]) -> dict[str, Service]:
    """Every service in the mesh by hostname; the first definition of a hostname wins."""
    workloads = _WorkloadIndex(_workloads(config, proxies))
    services: dict[str, Service] = {}

    for res in config.of_kind(model.SERVICE):
        spec = res.spec
        ports = _first_per_number(
            ServicePort(
                p.name, p.port, p.target_port or p.port, port_protocol(p.name, p.app_protocol)
            )
            for p in spec.ports
        )
        members = workloads.select(res.namespace, spec.selector)
        host = fqdn(res.name, res.namespace)
        services.setdefault(
            host,
            Service(
                hostname=host,
                namespace=res.namespace,
                short_name=res.name,
                ports=ports,
                vips=(spec.cluster_ip,) if spec.cluster_ip and spec.cluster_ip != "None" else (),
                endpoints=_endpoints(ports, members),
            ),
        )

    resolution_kind = {
        service_entry_pb2.ServiceEntry.STATIC: EDS,
        service_entry_pb2.ServiceEntry.DNS: STRICT_DNS,
        service_entry_pb2.ServiceEntry.DNS_ROUND_ROBIN: LOGICAL_DNS,
        service_entry_pb2.ServiceEntry.NONE: PASSTHROUGH,
    }
    for res in config.of_kind(model.SERVICE_ENTRY):
        se = res.spec
        kind = resolution_kind.get(se.resolution)
        if kind is None:
            continue
        ports = _first_per_number(
            ServicePort(
                p.name, p.number, p.target_port or p.number, port_protocol(p.name, p.protocol)
            )
            for p in se.ports
        )
        members = [
            _Workload(res.namespace, e.address, dict(e.labels), dict(e.ports), weight=e.weight or 1)
            for e in se.endpoints
        ]
        members += workloads.select(res.namespace, se.workload_selector.labels)
        for host in se.hosts:
            host = host.lower()
            host_members = members
            if kind == PASSTHROUGH:
                host_members = []
            elif kind != EDS and not members:
                host_members = [_Workload(res.namespace, host, {}, {})]
            services.setdefault(
                host,
                Service(
                    hostname=host,
                    namespace=res.namespace,
                    short_name="",
                    ports=ports,
                    resolution=kind,
                    vips=tuple(a for a in se.addresses if "/" not in a),
                    endpoints=_endpoints(ports, host_members),
                ),
            )
    return services
