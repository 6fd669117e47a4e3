"""The immutable inputs of translation: loaded configuration and connected proxies."""

from __future__ import annotations

import hashlib
import weakref
from bisect import insort
from collections.abc import Mapping, Sequence
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
PEER_AUTHENTICATION = "PeerAuthentication"
AUTHORIZATION_POLICY = "AuthorizationPolicy"
REQUEST_AUTHENTICATION = "RequestAuthentication"
SECRET = "Secret"
TELEMETRY = "Telemetry"
ENVOY_FILTER = "EnvoyFilter"

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


_DIGEST_MOD = 1 << 128


@dataclass(frozen=True)
class Lineage:
    """How a snapshot was derived from an earlier one: the resources taken out and put
    in (by identity). The earlier snapshot is held weakly, so lineage never keeps old
    configurations alive."""

    ancestor: weakref.ref
    removed: tuple[ConfigResource, ...]
    added: tuple[ConfigResource, ...]


# Snapshots back through which a derived one remembers its differences.
LINEAGE_DEPTH = 8


@dataclass(frozen=True)
class MeshConfig:
    """A complete, validated snapshot of the configuration directory."""

    resources: tuple[ConfigResource, ...] = ()
    mesh: mesh_config_pb2.MeshConfig = field(default_factory=default_mesh)
    # Earlier snapshots (newest first) this one was derived from, see evolve().
    lineage: tuple[Lineage, ...] = field(default=(), compare=False, repr=False)

    def of_kind(self, kind: str) -> list[ConfigResource]:
        return self._by_kind.get(kind, [])

    @cached_property
    def _by_kind(self) -> dict[str, list[ConfigResource]]:
        out: dict[str, list[ConfigResource]] = {}
        for res in sorted(self.resources, key=ConfigResource.order_key):
            out.setdefault(res.kind, []).append(res)
        return out

    @cached_property
    def _digest_sum(self) -> int:
        """The sum of the resources' digests: a hash of the set that one resource more
        or less changes by its own digest, so a derived snapshot need not add them all."""
        return sum(int.from_bytes(r.digest, "big") for r in self.resources) % _DIGEST_MOD

    @cached_property
    def version(self) -> str:
        """A content hash: equal configs have equal versions across restarts."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(self.mesh.SerializeToString(deterministic=True))
        digest.update(self._digest_sum.to_bytes(16, "big"))
        return digest.hexdigest()

    def evolve(
        self,
        resources: tuple[ConfigResource, ...],
        removed: Sequence[ConfigResource],
        added: Sequence[ConfigResource],
        mesh: mesh_config_pb2.MeshConfig,
    ) -> MeshConfig:
        """The snapshot of `resources`, which are this one's less `removed` plus `added`:
        its kind index and version come from this one's (a change of one file among
        thousands costs what that file holds), and it remembers the difference."""
        removed, added = tuple(removed), tuple(added)
        lineage = [Lineage(weakref.ref(self), removed, added)]
        for earlier in self.lineage[: LINEAGE_DEPTH - 1]:
            lineage.append(_compose(earlier, removed, added))
        child = MeshConfig(resources, mesh, tuple(lineage))
        known = self.__dict__
        if "_by_kind" in known:
            child.__dict__["_by_kind"] = _index_after(known["_by_kind"], removed, added)
        if "_digest_sum" in known:
            total = known["_digest_sum"] + sum(int.from_bytes(r.digest, "big") for r in added)
            total -= sum(int.from_bytes(r.digest, "big") for r in removed)
            child.__dict__["_digest_sum"] = total % _DIGEST_MOD
        return child

    def changes_since(
        self, earlier: MeshConfig
    ) -> tuple[tuple[ConfigResource, ...], tuple[ConfigResource, ...]] | None:
        """(removed, added) by identity since `earlier`, when this snapshot was derived
        from it within LINEAGE_DEPTH steps; None when unknown."""
        for step in self.lineage:
            if step.ancestor() is earlier:
                return step.removed, step.added
        return None

    def difference(
        self, earlier: MeshConfig
    ) -> tuple[tuple[ConfigResource, ...], tuple[ConfigResource, ...]]:
        """(removed, added) by identity since `earlier`: from the lineage when this
        snapshot remembers it, else by comparing every resource (the store keeps the
        objects of unchanged files, so identity tells what changed)."""
        if earlier is self:
            return (), ()
        known = self.changes_since(earlier)
        if known is not None:
            return known
        before = {id(r) for r in earlier.resources}
        after = {id(r) for r in self.resources}
        return (
            tuple(r for r in earlier.resources if id(r) not in after),
            tuple(r for r in self.resources if id(r) not in before),
        )


def _compose(earlier: Lineage, removed: tuple, added: tuple) -> Lineage:
    """The difference from `earlier.ancestor` after one more step."""
    gone = {id(r) for r in removed}
    came = {id(r) for r in earlier.added}
    return Lineage(
        earlier.ancestor,
        earlier.removed + tuple(r for r in removed if id(r) not in came),
        tuple(r for r in earlier.added if id(r) not in gone) + added,
    )


def _index_after(
    index: dict[str, list[ConfigResource]], removed: tuple, added: tuple
) -> dict[str, list[ConfigResource]]:
    out = dict(index)
    gone = {id(r) for r in removed}
    for kind in {r.kind for r in removed} | {r.kind for r in added}:
        kept = [r for r in index.get(kind, ()) if id(r) not in gone]
        for res in added:
            if res.kind == kind:
                insort(kept, res, key=ConfigResource.order_key)
        if kept:
            out[kind] = kept
        else:
            out.pop(kind, None)
    return out


@dataclass(frozen=True, slots=True)
class WorkloadPort:
    """An application port and the sidecar port where other sidecars reach it."""

    app_port: int
    inbound_port: int


REDIRECT = "REDIRECT"
INTERCEPTION_MODES = ("NONE", REDIRECT)


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
    # Istio's INTERCEPTION_MODE: NONE (the app uses the sidecar as its proxy) or REDIRECT
    # (iptables capture, as istio-init sets it: xds-server iptables).
    interception: str = "NONE"
    # The stream is bound to an identity and holds its SDS certificate (identity.py):
    # its clusters and inbound listeners speak mutual TLS with peers that hold one too.
    mtls: bool = False
    # Istio's WORKLOAD_NAME (a Deployment's name): the source_workload and
    # destination_workload of its metrics; empty means the node id.
    workload_name: str = ""

    @property
    def workload(self) -> str:
        return self.workload_name or self.node_id

    @property
    def captured(self) -> bool:
        return self.interception == REDIRECT

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


def workload_policies(config: MeshConfig, kind: str, proxy: Proxy) -> list[ConfigResource]:
    """The security policies of `kind` that apply to `proxy`'s workload, oldest first:
    those of the root namespace and of its own whose selector it matches, or that have
    none (PeerAuthentication ranks them otherwise: translators.peer_authentication)."""
    root = config.mesh.root_namespace
    found = [
        p
        for p in config.of_kind(kind)
        if p.namespace in (root, proxy.namespace)
        and (
            not p.spec.HasField("selector")
            or all(proxy.labels.get(k) == v for k, v in p.spec.selector.match_labels.items())
        )
    ]
    return sorted(found, key=lambda p: p.order_key())
