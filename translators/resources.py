"""Envoy resources ready to send: packed once, hashed once, shared by every proxy."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import any_pb2
from google.protobuf.message import Message

from translators.wire import varint

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


@dataclass(slots=True)
class Packed:
    """A resource as it goes on the wire, with a hash of its exact bytes (which hold its
    name, so equal hashes mean the same resource with the same content). Never changed
    once made; not a frozen dataclass only because making one costs six times as much,
    and a cold translation makes thousands. Responses join `value` into their bytes, so
    no Any message is made unless asked for."""

    name: str
    type_url: str
    value: bytes | None  # None: only a version a reconnecting delta client declared
    hash: str

    @property
    def any(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=self.type_url, value=self.value)

    @property
    def digest(self) -> int:
        return int(self.hash, 16)


def to_any(message: Message) -> any_pb2.Any:
    """`message` as a google.protobuf.Any, for typed_config fields."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def pack(name: str, message: Message) -> Packed:
    return pack_serialized(
        name, message.DESCRIPTOR.full_name, message.SerializeToString(deterministic=True)
    )


def pack_serialized(name: str, full_name: str, value: bytes) -> Packed:
    """A resource already serialized (deterministically), e.g. joined from cached parts."""
    return Packed(
        name, _PREFIX + full_name, value, hashlib.blake2b(value, digest_size=8).hexdigest()
    )


def field_bytes(number: int, body: bytes) -> bytes:
    """A length-delimited protobuf field (string, bytes or message) as serialized: tag,
    length, bytes; for joining messages from cached parts."""
    size = len(body)
    if size < 128 and number < 16:
        return _HEADS[number][size] + body
    return varint(number << 3 | 2) + varint(size) + body


# The tag and length of fields 0-15 under 128 bytes: two bytes, looked up.
_HEADS = [[bytes((number << 3 | 2, size)) for size in range(128)] for number in range(16)]


def pack_all(messages: Iterable[Message]) -> dict[str, Packed]:
    """Pack resources keyed by their `name` (or `cluster_name` for assignments)."""
    out = {}
    for message in messages:
        name = getattr(message, "cluster_name", "") or message.name
        out[name] = pack(name, message)
    return out


_MASK = (1 << 64) - 1


def _sum(resources: Iterable[Packed]) -> tuple[int, int]:
    total = count = 0
    for res in resources:
        total += res.digest
        count += 1
    return total & _MASK, count


def _version(total: int, count: int) -> str:
    # The sum of the resources' hashes: independent of order, so a set made of a shared
    # part and a few more resources gets its version without walking the shared part.
    return f"{(total + count * 0x9E3779B97F4A7C15) & _MASK:016x}"


def version_of(resources: Mapping[str, Packed]) -> str:
    """Content version of a set of resources: equal content, equal version, across restarts."""
    if isinstance(resources, ResourceSet):
        return resources.version
    return _version(*_sum(resources.values()))


class ResourceSet(Mapping[str, Packed]):
    """Resources of one type as one proxy should have them: immutable, shared by every
    proxy that sees the same ones, its version computed once. `base` lets a proxy's set be
    a shared set plus a few of its own without copying the shared part."""

    __slots__ = ("_own", "_base", "_total", "_count", "_keys", "_depth")
    MAX_DEPTH = 8  # overlays on overlays are flattened beyond this

    def __init__(self, own: Mapping[str, Packed], base: ResourceSet | None = None) -> None:
        self._own = dict(own)
        self._base = base
        total, count = _sum(self._own.values())
        if base is not None:
            shadowed = [base[n] for n in self._own if n in base]
            hidden, hidden_count = _sum(shadowed)
            total = base._total + total - hidden
            count = base._count + count - hidden_count
        self._total, self._count = total & _MASK, count
        self._keys: frozenset[str] | None = None
        self._depth = 0 if base is None else base._depth + 1

    @classmethod
    def overlay(cls, base: ResourceSet, own: Mapping[str, Packed]) -> ResourceSet:
        """`base` with `own` replacing or adding resources, without copying `base`
        (flattened once overlays pile up, so lookups stay short)."""
        if base._depth + 1 > cls.MAX_DEPTH:
            merged = dict(base.items())
            merged.update(own)
            return cls(merged)
        return cls(own, base=base)

    @property
    def version(self) -> str:
        return _version(self._total, self._count)

    def __getitem__(self, name: str) -> Packed:
        found = self._own.get(name)
        if found is not None:
            return found
        if self._base is not None:
            return self._base[name]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in self._own or (self._base is not None and name in self._base)

    def __iter__(self):
        if self._base is None:
            return iter(self._own)
        return iter(self.keys_set())

    def __len__(self) -> int:
        return self._count

    def keys_set(self) -> frozenset[str]:
        if self._keys is None:
            own = frozenset(self._own)
            self._keys = own if self._base is None else self._base.keys_set() | own
        return self._keys

    def subset(self, names: frozenset[str]) -> ResourceSet:
        """The resources among `names` (a named subscription); memoised, since every proxy
        of a view asks for the same names."""
        key = (id(self), names)
        found = _SUBSETS.get(key)
        if found is not None and found[0] is self:
            _SUBSETS.move_to_end(key)
            return found[1]
        if names >= self.keys_set():
            result = self
        else:
            result = ResourceSet({n: self[n] for n in names if n in self})
        _SUBSETS[key] = (self, result)
        if len(_SUBSETS) > 512:
            _SUBSETS.popitem(last=False)
        return result

    def changed_since(self, previous: Mapping[str, Packed]) -> ResourceSet:
        """The resources that are new or differ from `previous`; memoised, since every
        proxy of a view moves from the same set to the same set. A proxy's own set (a few
        resources over its view's) is diffed through the views' memoised diff; sets only
        one stream holds (a reconnecting client's declared versions) are not memoised, so
        that a closed stream leaves nothing behind."""
        if not isinstance(previous, ResourceSet):
            return self._changed(previous)
        if self._base is not None and previous._base is not None:
            found = self._changed_over_bases(previous)
            if found is not None:
                return found
        key = (id(previous), id(self))
        found = _CHANGES.get(key)
        if found is not None and found[0] is previous and found[1] is self:
            _CHANGES.move_to_end(key)
            return found[2]
        changed = self._changed(previous)
        _CHANGES[key] = (previous, self, changed)
        if len(_CHANGES) > 512:
            _CHANGES.popitem(last=False)
        return changed

    def _changed(self, previous: Mapping[str, Packed]) -> ResourceSet:
        return ResourceSet(
            {
                n: p
                for n, p in self.items()
                if (old := previous.get(n)) is None or old.hash != p.hash
            }
        )

    def _changed_over_bases(self, previous: ResourceSet) -> ResourceSet | None:
        """changed_since for two sets over bases: the bases' (memoised) diff plus what
        the small own parts change; None when an own part shadows a name the bases'
        diff carries (then the plain walk is simpler)."""
        assert self._base is not None and previous._base is not None
        if len(self._own) + len(previous._own) > 64:
            return None
        base_diff = self._base.changed_since(previous._base)
        direct: dict[str, Packed] = {}
        for name in (*self._own, *previous._own):
            if name in base_diff:
                return None
            packed = self.get(name)
            if packed is not None and (
                (old := previous.get(name)) is None or old.hash != packed.hash
            ):
                direct[name] = packed
        return ResourceSet(direct, base=base_diff) if direct else base_diff

    def removed_since(self, previous: Mapping[str, Packed]) -> frozenset[str]:
        """The names `previous` has and this set lacks; memoised like changed_since."""
        key = (id(previous), id(self))
        found = _REMOVALS.get(key)
        if found is not None and found[0] is previous and found[1] is self:
            _REMOVALS.move_to_end(key)
            return found[2]
        before = previous.keys_set() if isinstance(previous, ResourceSet) else frozenset(previous)
        removed = before - self.keys_set()
        if not isinstance(previous, ResourceSet):
            return removed  # one stream's declared versions: not kept
        _REMOVALS[key] = (previous, self, removed)
        if len(_REMOVALS) > 512:
            _REMOVALS.popitem(last=False)
        return removed


_REMOVALS: OrderedDict[tuple[int, int], tuple[Mapping, ResourceSet, frozenset[str]]] = OrderedDict()
_CHANGES: OrderedDict[tuple[int, int], tuple[Mapping, ResourceSet, ResourceSet]] = OrderedDict()
_SUBSETS: OrderedDict[tuple[int, frozenset[str]], tuple[ResourceSet, ResourceSet]] = OrderedDict()

Resources = dict[str, ResourceSet | dict[str, Packed]]  # type URL -> name -> resource
