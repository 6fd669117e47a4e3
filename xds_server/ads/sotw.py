"""State-of-the-world ADS protocol for one stream, as a state machine without I/O.

Inputs are the client's DiscoveryRequests and new desired resources for this proxy;
outputs are the DiscoveryResponses to write, in order. The rules it keeps
(reference/xds-protocol-checklist.md): answer every first request of a type, even empty;
detect NACK by error_detail and never resend rejected content; ignore stale nonces but
remember the names they carry; answer a repeated request after its ACK (a warming cluster
asks again); send CDS, EDS, SDS, LDS, RDS in that order, and remove clusters only after the
routes that used them have been replaced and acknowledged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from envoy.service.discovery.v3 import discovery_pb2

from translators.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    WILDCARD_TYPES,
    Packed,
    Resources,
    ResourceSet,
)
from xds_server.ads.responses import response
from xds_server.text import safe_text

SYNCED, NOT_SENT, STALE, ERROR = "SYNCED", "NOT SENT", "STALE", "ERROR"


EMPTY = ResourceSet({})
# Name sets streams subscribe with, one object per distinct set: every Envoy of a
# namespace asks for the same thousands of endpoint names, and each stream would
# otherwise keep its own copy of them. A set is kept once a second stream asks for it:
# one client adding names one at a time makes a new set each time, none worth keeping.
_NAME_SETS: OrderedDict[frozenset[str], frozenset[str]] = OrderedDict()
_SEEN_ONCE: OrderedDict[int, None] = OrderedDict()


def _shared_names(names: frozenset[str]) -> frozenset[str]:
    if len(names) < 8:
        return names
    found = _NAME_SETS.get(names)
    if found is not None:
        _NAME_SETS.move_to_end(names)
        return found
    key = hash(names)
    if key in _SEEN_ONCE:
        del _SEEN_ONCE[key]
        _NAME_SETS[names] = names
        if len(_NAME_SETS) > 1024:
            _NAME_SETS.popitem(last=False)
    else:
        _SEEN_ONCE[key] = None
        if len(_SEEN_ONCE) > 4096:
            _SEEN_ONCE.popitem(last=False)
    return names


# Types whose SotW responses may carry only what changed.
INCREMENTAL_TYPES = frozenset({ENDPOINT, ROUTE})


def _keys(resources: Mapping[str, Packed]) -> frozenset[str]:
    if isinstance(resources, ResourceSet):
        return resources.keys_set()
    return frozenset(resources)


@dataclass
class TypeState:
    """What this stream asked for, was sent and acknowledged, for one type URL."""

    type_url: str
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    sent: Mapping[str, Packed] = field(default_factory=dict)
    sent_version: str = ""
    sent_nonce: str = ""
    sent_generation: int = -1
    responses_sent: int = 0
    bytes_sent: int = 0
    pending: bool = False  # a response is out and neither ACKed nor NACKed
    acked_version: str = ""
    acked_nonce: str = ""
    acked_generation: int = -1  # the generation of what the client last accepted
    acked_at: float = 0.0  # wall-clock time of the last ACK
    nacked_version: str | None = None
    nacked_generation: int = -1
    nack_message: str = ""  # Envoy's text, escaped and cut (xds_server.text)
    nacks: int = 0
    # Listeners and routes wait while new clusters warm (see SotwStream._respond_if_needed).
    deferred: bool = False
    deferred_force: bool = False
    adds_clusters: bool = False  # CDS: the response out added clusters

    def record_nack(self, message: str) -> None:
        """The client refused the response in flight."""
        self.pending = False
        self.nacked_version = self.sent_version
        self.nacked_generation = self.sent_generation
        self.nack_message = safe_text(message)
        self.nacks += 1

    def status(self) -> str:
        if not self.sent_nonce:
            return NOT_SENT
        if not self.wildcard and not self.names:
            # Unsubscribed from every name: the client lacks nothing, and an answer still
            # in flight will never be ACKed (it no longer watches the type).
            return SYNCED
        if self.nacked_version is not None and self.nacked_version == self.sent_version:
            return ERROR
        if self.deferred:
            return STALE  # newer content waits for new clusters to warm
        return SYNCED if self.acked_nonce == self.sent_nonce else STALE


@dataclass
class SotwStream:
    """Protocol state of one SotW ADS stream."""

    node_id: str
    control_plane_id: str = "xds-server"
    api: ClassVar[str] = "sotw"
    resources: Resources = field(default_factory=dict)
    generation: int = -1
    types: dict[str, TypeState] = field(default_factory=dict)
    deferred_cluster_removal: bool = False
    unknown_requests: int = 0  # requests for types this server does not serve

    # ---- inputs -------------------------------------------------------------------------

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list:
        """Process one request; return the responses it calls for."""
        found = self._type_state(request.type_url)
        if found is None:
            return []
        state, first = found
        type_url = state.type_url
        nonce = request.response_nonce
        if nonce and nonce != state.sent_nonce:
            self._subscribe(state, request, first)  # stale: remember, don't answer
            return []
        changed = self._subscribe(state, request, first)
        out: list[discovery_pb2.DiscoveryResponse] = []
        if not nonce:
            out += self._respond_if_needed(state, force=True)
        elif request.HasField("error_detail"):
            state.record_nack(request.error_detail.message)
            if changed:
                out += self._respond_if_needed(state)
        elif state.pending:
            state.pending = False
            state.acked_version = request.version_info
            state.acked_generation = state.sent_generation
            state.acked_nonce = nonce
            state.acked_at = time.time()
            state.nacked_version = None
            out += self._respond_if_needed(state)
        else:  # the same nonce again after its ACK: the client wants the resources again
            out += self._respond_if_needed(state, force=True)
        if type_url == CLUSTER and not state.pending:
            out += self._flush_deferred()  # new clusters warmed (or were refused)
        out += self._finish_cluster_removal()
        return out

    def set_resources(self, resources: Resources, generation: int) -> list:
        """New desired resources for this proxy; return the pushes they call for."""
        self.resources = resources
        self.generation = generation
        out: list[discovery_pb2.DiscoveryResponse] = []
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is not None and state.sent_nonce:
                sent = self._respond_if_needed(state, partial=True)
                if not sent and state.status() == SYNCED:
                    # It holds what this generation wants: a NACK later is measured
                    # against this generation, not an older one.
                    state.acked_generation = generation
                out += sent
        out += self._finish_cluster_removal()
        return out

    # ---- internals ----------------------------------------------------------------------

    state_class: ClassVar[type[TypeState]] = TypeState

    def _type_state(self, type_url: str) -> tuple[TypeState, bool] | None:
        """This type's state, and whether this is its first request; None for a type this
        server does not serve (never answered, and not remembered: a client could send
        any number of made-up ones)."""
        if type_url not in PUSH_ORDER:
            self.unknown_requests += 1
            return None
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = self.state_class(type_url)
            return state, True
        return state, False

    def _subscribe(self, state: TypeState, request, first: bool) -> bool:
        """Apply the request's resource names; True when the subscription changed."""
        names = frozenset(request.resource_names)
        wildcard = "*" in names or (
            state.type_url in WILDCARD_TYPES and not names and (first or state.wildcard)
        )
        names = _shared_names(names - {"*"})
        changed = (wildcard, names) != (state.wildcard, state.names)
        state.wildcard, state.names = wildcard, names
        return changed

    def _desired(self, state: TypeState) -> ResourceSet:
        available = self.resources.get(state.type_url)
        if available is None:
            available = EMPTY
        elif not isinstance(available, ResourceSet):
            available = self.resources[state.type_url] = ResourceSet(available)
        if state.wildcard:
            return available
        return available.subset(state.names)

    def _respond_if_needed(
        self, state: TypeState, force: bool = False, partial: bool = False
    ) -> list:
        """The response this state calls for, if any. `partial`: a push of new content
        (not an answer to a request), which may carry only what changed."""
        if not state.wildcard and not state.names:
            # The client dropped its last name of this type (a gateway losing its last
            # listener unsubscribes from routes): it watches nothing and would never ACK.
            return []
        if state.type_url in (LISTENER, ROUTE) and self._clusters_warming():
            # Make before break: Envoy ACKs a CDS update only once its new clusters have
            # warmed (have endpoints); a route to a cluster still warming answers 503.
            state.deferred = True
            state.deferred_force = state.deferred_force or force
            return []
        content = self._content(state)
        version = content.version
        if not force:
            if version == state.sent_version:
                return []
            if version == state.nacked_version:
                return []  # the client refused exactly this; wait for different content
        return self._response(state, content, version, partial=partial and not force)

    def _content(self, state: TypeState) -> ResourceSet:
        """What this type should hold now: the desired resources, except that clusters
        being removed stay until the routes have moved off them."""
        content = self._desired(state)
        if state.type_url == CLUSTER and content.version != state.sent_version:
            removed = _keys(state.sent) - content.keys_set()
            others_busy = any(
                s.pending or self._differs(s) for s in self.types.values() if s.type_url != CLUSTER
            )
            self.deferred_cluster_removal = bool(removed) and others_busy
            if self.deferred_cluster_removal:
                content = ResourceSet({n: state.sent[n] for n in removed}, base=content)
        return content

    def _clusters_warming(self) -> bool:
        clusters = self.types.get(CLUSTER)
        return clusters is not None and clusters.pending and clusters.adds_clusters

    def _flush_deferred(self) -> list:
        out: list[discovery_pb2.DiscoveryResponse] = []
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is not None and state.deferred:
                force, state.deferred, state.deferred_force = state.deferred_force, False, False
                out += self._respond_if_needed(state, force=force)
        return out

    def _differs(self, state: TypeState) -> bool:
        if state.type_url not in PUSH_ORDER or not state.sent_nonce:
            return False
        if not state.wildcard and not state.names:
            return False  # it watches nothing: nothing to wait for
        version = self._desired(state).version
        return version not in (state.sent_version, state.nacked_version)

    def _finish_cluster_removal(self) -> list:
        if not self.deferred_cluster_removal:
            return []
        if any(s.pending for s in self.types.values() if s.type_url != CLUSTER):
            return []
        self.deferred_cluster_removal = False
        return self._respond_if_needed(self.types[CLUSTER])

    def _response(
        self, state: TypeState, content: ResourceSet, version: str, partial: bool = False
    ):
        """Send `content` as this type's new state. Listeners and clusters go whole (the
        state of the world); endpoints and routes only where they changed since the last
        response, which Envoy applies on top (xDS "grouping resources into responses"),
        unless that response was refused or the client asked for everything."""
        wire = content
        if (
            partial
            and state.type_url in INCREMENTAL_TYPES
            and state.sent_nonce
            and state.nacked_version != state.sent_version
        ):
            wire = content.changed_since(state.sent)
        endpoints = self.types.get(ENDPOINT)
        changed_clusters = (
            state.type_url == CLUSTER
            and endpoints is not None
            and bool(endpoints.sent_nonce)
            and any(
                (old := state.sent.get(n)) is None or old.hash != p.hash for n, p in content.items()
            )
        )
        if state.type_url == CLUSTER:
            state.adds_clusters = bool(content.keys_set() - _keys(state.sent))
        sent = response(state.type_url, version, wire, self.control_plane_id)
        state.sent = content
        state.sent_version = version
        state.sent_nonce = sent.nonce
        state.sent_generation = self.generation
        state.pending = True
        state.responses_sent += 1
        state.bytes_sent += len(sent.body)
        out = [sent]
        if changed_clusters:
            # A changed cluster warms until it gets its assignment again, even an unchanged one.
            out += self._respond_if_needed(endpoints, force=True)
        return out

    def status(self) -> dict[str, TypeState]:
        return {t: s for t, s in self.types.items() if t in PUSH_ORDER}
