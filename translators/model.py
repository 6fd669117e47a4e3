"""The immutable inputs of translation: loaded configuration and connected proxies."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from google.protobuf.message import Message

from protos import mesh_config_pb2

VIRTUAL_SERVICE = "VirtualService"
DESTINATION_RULE = "DestinationRule"
SERVICE_ENTRY = "ServiceEntry"
WORKLOAD_ENTRY = "WorkloadEntry"
SERVICE = "Service"
GATEWAY = "Gateway"
SIDECAR = "Sidecar"
TRAFFIC_SPLIT = "TrafficSplit"
SERVICE_PROFILE = "ServiceProfile"
MESH_CONFIG = "MeshConfig"

DEFAULT_NAMESPACE = "default"
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a resource was written: file and 1-based line of its document."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class ConfigResource:
    """One loaded resource: identity, typed spec and where it came from."""

    kind: str
    namespace: str
    name: str
    spec: Message
    origin: Origin
    labels: Mapping[str, str] = field(default_factory=dict)
    created: str = ""

    @cached_property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @cached_property
    def digest(self) -> bytes:
        """A hash of everything the config version covers of this resource: computed
        once per resource object (files that did not change keep theirs)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update("\0".join(self.key).encode())
        digest.update(self.spec.SerializeToString(deterministic=True))
        digest.update(repr(sorted(self.labels.items())).encode())
        return digest.digest()

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def order_key(self) -> tuple[str, str, str]:
        """Istio's config order: oldest creationTimestamp first, then name, then namespace."""
        return (self.created or "", self.name, self.namespace)


def default_mesh() -> mesh_config_pb2.MeshConfig:
    mesh = mesh_config_pb2.MeshConfig(root_namespace="istio-system", trust_domain=CLUSTER_DOMAIN)
    mesh.connect_timeout.FromSeconds(10)
    return mesh


def with_mesh_defaults(mesh: mesh_config_pb2.MeshConfig) -> mesh_config_pb2.MeshConfig:
    """Fill what the user left unset with Istio's defaults."""
    merged = default_mesh()
    merged.MergeFrom(mesh)
    return merged


@dataclass(frozen=True)
class MeshConfig:
    """A complete, validated snapshot of the configuration directory."""

    resources: tuple[ConfigResource, ...] = ()
    mesh: mesh_config_pb2.MeshConfig = field(default_factory=default_mesh)

    def of_kind(self, kind: str) -> list[ConfigResource]:
        return self._by_kind.get(kind, [])

    @cached_property
    def _by_kind(self) -> dict[str, list[ConfigResource]]:
        out: dict[str, list[ConfigResource]] = {}
        for res in sorted(self.resources, key=ConfigResource.order_key):
            out.setdefault(res.kind, []).append(res)
        return out

    @cached_property
    def version(self) -> str:
        """A content hash: equal configs have equal versions across restarts."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(self.mesh.SerializeToString(deterministic=True))
        for res in sorted(self.resources, key=lambda r: r.key):
            digest.update(res.digest)
        return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class WorkloadPort:
    """An application port and the sidecar port where other sidecars reach it."""

    app_port: int
    inbound_port: int


@dataclass(frozen=True)
class Proxy:
    """A connected Envoy, as its bootstrap's node describes it."""

    node_id: str
    namespace: str = DEFAULT_NAMESPACE
    labels: Mapping[str, str] = field(default_factory=dict)
    service_account: str = "default"
    ip: str = "127.0.0.1"
    role: str = "sidecar"
    bind_address: str = "127.0.0.1"
    outbound_address: str = "127.0.0.1"
    outbound_port: int = 15001
    ports: tuple[WorkloadPort, ...] = ()

    @property
    def app_address(self) -> str:
        """Where the app listens: beside the inbound listener, or on loopback when that
        listener binds every address."""
        return "127.0.0.1" if self.bind_address in ("0.0.0.0", "::", "") else self.bind_address

    def inbound_port_for(self, app_port: int) -> int | None:
        for port in self.ports:
            if port.app_port == app_port:
                return port.inbound_port
        return None
