"""Envoy resources ready to send: packed once, hashed once, shared by every proxy."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import any_pb2
from google.protobuf.message import Message

_PREFIX = "type.googleapis.com/"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

# Make-before-break: a resource is sent before anything that refers to it.
PUSH_ORDER = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE)
# LDS and CDS are state of the world; the others are asked for by name.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}


@dataclass(frozen=True, slots=True)
class Packed:
    """A resource as it goes on the wire, with a hash of its exact bytes."""

    name: str
    any: any_pb2.Any
    hash: str


def to_any(message: Message) -> any_pb2.Any:
    """`message` as a google.protobuf.Any, for typed_config fields."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def pack(name: str, message: Message) -> Packed:
    packed = any_pb2.Any(
        type_url=_PREFIX + message.DESCRIPTOR.full_name,
        value=message.SerializeToString(deterministic=True),
    )
    return Packed(name, packed, hashlib.blake2b(packed.value, digest_size=8).hexdigest())


def pack_all(messages: Iterable[Message]) -> dict[str, Packed]:
    """Pack resources keyed by their `name` (or `cluster_name` for assignments)."""
    out = {}
    for message in messages:
        name = getattr(message, "cluster_name", "") or message.name
        out[name] = pack(name, message)
    return out


def version_of(resources: Mapping[str, Packed], names: Iterable[str] | None = None) -> str:
    """Content version of a set of resources: equal content, equal version, across restarts."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(resources if names is None else names):
        res = resources.get(name)
        if res is not None:
            digest.update(name.encode())
            digest.update(res.hash.encode())
    return digest.hexdigest()


Resources = dict[str, dict[str, Packed]]  # type URL -> name -> resource
