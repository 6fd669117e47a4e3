"""DiscoveryResponses as they go on the wire, serialized once per content.

Every proxy of a namespace gets the same clusters, endpoints and routes, so a response
(version, type, resources, control plane and nonce) is serialized once per content and
the same bytes go to every stream. That includes the nonce: it only has to tell apart
the responses of one stream, and two responses of one stream share a nonce only when
they carry the same bytes, so an ACK of either means the same.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from threading import Lock

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from translators.resources import Packed, ResourceSet

MAX_CACHED_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Response:
    """One response of one stream: what the protocol needs to know, and its bytes."""

    type_url: str
    version_info: str
    nonce: str
    content: Mapping[str, Packed]
    body: bytes  # the serialized DiscoveryResponse

    def wire(self) -> bytes:
        return self.body

    @property
    def resources(self) -> list[any_pb2.Any]:
        return [self.content[name].any for name in sorted(self.content)]


class _BodyCache:
    """Bodies by (type, version, control plane, version of what is sent), least recently
    used dropped first."""

    def __init__(self, limit: int = MAX_CACHED_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._bodies: OrderedDict[tuple[str, str, str, str], tuple[bytes, str]] = OrderedDict()
        self._lock = Lock()
        self._nonces = itertools.count(1)

    def get(
        self, key: tuple[str, str, str, str], content: Mapping[str, Packed]
    ) -> tuple[bytes, str]:
        """(bytes, nonce) of the response for `key`."""
        with self._lock:
            found = self._bodies.get(key)
            if found is not None:
                self._bodies.move_to_end(key)
                return found
            nonce = str(next(self._nonces))
        type_url, version, control_plane, _ = key
        body = discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=nonce,
            resources=[content[name].any for name in sorted(content)],
            control_plane=base_pb2.ControlPlane(identifier=control_plane),
        ).SerializeToString()
        with self._lock:
            found = self._bodies.setdefault(key, (body, nonce))
            if found[0] is body:
                self.size += len(body)
                while self.size > self.limit and len(self._bodies) > 1:
                    _, (dropped, _) = self._bodies.popitem(last=False)
                    self.size -= len(dropped)
        return found


BODIES = _BodyCache()


def response(type_url: str, version: str, content: ResourceSet, control_plane: str) -> Response:
    """`content` is what goes on the wire; `version` the state the client then holds."""
    body, nonce = BODIES.get((type_url, version, control_plane, content.version), content)
    return Response(type_url, version, nonce, content, body)
