"""DiscoveryResponses as they go on the wire, serialized once per content.

Every proxy of a namespace gets the same clusters, endpoints and routes, so the body of a
response (version, type, resources, control plane) is serialized once per content version
and shared; each stream appends only its nonce. Protobuf allows that: a message is the
concatenation of its fields, in any order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from threading import Lock

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from translators.resources import Packed, ResourceSet

MAX_CACHED_BYTES = 256 * 1024 * 1024
_NONCE_TAG = bytes([(5 << 3) | 2])  # DiscoveryResponse.nonce: field 5, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


@dataclass(frozen=True)
class Response:
    """One response of one stream: what the protocol needs to know, and its bytes."""

    type_url: str
    version_info: str
    nonce: str
    content: Mapping[str, Packed]
    body: bytes  # the DiscoveryResponse without its nonce

    def wire(self) -> bytes:
        nonce = self.nonce.encode()
        return self.body + _NONCE_TAG + _varint(len(nonce)) + nonce

    @property
    def resources(self) -> list[any_pb2.Any]:
        return [self.content[name].any for name in sorted(self.content)]

    def message(self) -> discovery_pb2.DiscoveryResponse:
        return discovery_pb2.DiscoveryResponse.FromString(self.wire())


class _BodyCache:
    """Bodies by (type, version, control plane, version of what is sent), least recently
    used dropped first."""

    def __init__(self, limit: int = MAX_CACHED_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._bodies: OrderedDict[tuple[str, str, str, str], bytes] = OrderedDict()
        self._lock = Lock()

    def get(self, key: tuple[str, str, str, str], content: Mapping[str, Packed]) -> bytes:
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
                return body
        type_url, version, control_plane, _ = key
        body = discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            resources=[content[name].any for name in sorted(content)],
            control_plane=base_pb2.ControlPlane(identifier=control_plane),
        ).SerializeToString()
        with self._lock:
            if key not in self._bodies:
                self._bodies[key] = body
                self.size += len(body)
                while self.size > self.limit and len(self._bodies) > 1:
                    _, dropped = self._bodies.popitem(last=False)
                    self.size -= len(dropped)
        return body


BODIES = _BodyCache()


def response(
    type_url: str,
    version: str,
    nonce: str,
    content: ResourceSet,
    control_plane: str,
) -> Response:
    """`content` is what goes on the wire; `version` the state the client then holds."""
    body = BODIES.get((type_url, version, control_plane, content.version), content)
    return Response(type_url, version, nonce, content, body)
