"""SotW and delta responses as they go on the wire, serialized once per content.

Every proxy of a namespace gets the same clusters, endpoints and routes, so a response
(version, type, resources, control plane and nonce) is serialized once per content and
the same bytes go to every stream. That includes the nonce: it only has to tell apart
the responses of one stream, and two responses of one stream share a nonce only when
they carry the same bytes, so an ACK of either means the same.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from threading import Lock

from google.protobuf import any_pb2

from translators.resources import Packed, ResourceSet, field_bytes

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
    """Bodies by what they carry (type, versions, control plane), least recently used
    dropped first."""

    def __init__(self, limit: int = MAX_CACHED_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._bodies: OrderedDict[Hashable, tuple[bytes, str]] = OrderedDict()
        self._lock = Lock()
        self._nonces = itertools.count(1)

    def get(self, key: Hashable, build: Callable[[str], bytes]) -> tuple[bytes, str]:
        """(bytes, nonce) of the response for `key`; `build(nonce)` serializes it."""
        with self._lock:
            found = self._bodies.get(key)
            if found is not None:
                self._bodies.move_to_end(key)
                return found
            nonce = str(next(self._nonces))
        body = build(nonce)
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
    """A SotW response: `content` is what goes on the wire; `version` the state the client
    then holds."""

    def build(nonce: str) -> bytes:
        # DiscoveryResponse{version_info: 1, resources: 2, type_url: 4, nonce: 5,
        # control_plane: 6}, joined from the resources' bytes (no message per resource).
        return b"".join(
            (
                _string(1, version),
                *(field_bytes(2, _any(content[name])) for name in sorted(content)),
                _string(4, type_url),
                _string(5, nonce),
                field_bytes(6, _string(1, control_plane)),
            )
        )

    body, nonce = BODIES.get(("sotw", type_url, version, control_plane, content.version), build)
    return Response(type_url, version, nonce, content, body)


def delta_response(
    type_url: str,
    version: str,
    content: ResourceSet,
    removed: frozenset[str],
    control_plane: str,
) -> Response:
    """A delta response: `content` the resources added or changed, each with its hash as
    its version; `removed` the names the client should drop; `version` (shown by Envoy as
    version_text) the state the client then holds."""

    def build(nonce: str) -> bytes:
        # DeltaDiscoveryResponse{system_version_info: 1, resources: 2, type_url: 4,
        # nonce: 5, removed_resources: 6, control_plane: 7}, each resource a
        # Resource{version: 1, resource: 2, name: 3}.
        return b"".join(
            (
                _string(1, version),
                *(
                    field_bytes(
                        2,
                        _string(1, packed.hash) + field_bytes(2, _any(packed)) + _string(3, name),
                    )
                    for name in sorted(content)
                    for packed in (content[name],)
                ),
                _string(4, type_url),
                _string(5, nonce),
                *(field_bytes(6, name.encode()) for name in sorted(removed)),
                field_bytes(7, _string(1, control_plane)),
            )
        )

    # The removed names by digest: a key must not keep a client's made-up names alive.
    gone = hashlib.blake2b(
        "".join(f"{len(n)}:{n}" for n in sorted(removed)).encode(), digest_size=16
    ).hexdigest()
    key = ("delta", type_url, version, control_plane, content.version, gone)
    body, nonce = BODIES.get(key, build)
    return Response(type_url, version, nonce, content, body)


def _string(number: int, text: str) -> bytes:
    """A string field, left out when empty (as protobuf writes it)."""
    return field_bytes(number, text.encode()) if text else b""


def _any(packed: Packed) -> bytes:
    """A resource as a google.protobuf.Any{type_url: 1, value: 2}."""
    assert packed.value is not None, packed.name  # declared versions are never sent
    return _string(1, packed.type_url) + (field_bytes(2, packed.value) if packed.value else b"")
