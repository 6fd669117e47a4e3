"""Incremental (delta) ADS protocol for one stream, as a state machine without I/O.

The same inputs and outputs as the SotW machine (xds_server.ads.sotw), whose ordering it
keeps: CDS before EDS before LDS before RDS, listeners and routes held back while new
clusters warm, clusters removed only after the routes moved off them. What differs is
what goes on the wire (reference/xds-protocol-checklist.md, section 7):

- Each response carries only the resources the client lacks, each with its own version
  (the hash of its bytes, stable across restarts), and names it should drop in
  `removed_resources`.
- Subscriptions change by `resource_names_subscribe` / `_unsubscribe`; a name subscribed
  again is sent again; a subscribed name that does not exist is reported removed, so the
  client stops waiting, and stays subscribed.
- On reconnect, `initial_resource_versions` says what the client holds: wildcard
  resources it has at the right version are not sent again, and the ones gone are removed.
- One response per type is in flight: newer content waits for its ACK or NACK and then
  goes as one diff, so a slow client gets the newest state and never a queue.
- A NACK makes the resources of the refused response unknown to the server: they are not
  sent again at the refused version, and the next different content goes out.

What the client holds is tracked as the shared content it last acknowledged (`held`),
plus a few names per stream whose state is unknown, so thousands of streams that hold
the same thing share one set and one computed diff.
"""

from __future__ import annotations

import time
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
    ResourceSet,
)
from xds_server.ads.responses import Response, delta_response
from xds_server.ads.sotw import (
    EMPTY,
    ERROR,
    STALE,
    SotwStream,
    TypeState,
    _keys,
    _shared_names,
)


@dataclass
class DeltaTypeState(TypeState):
    """TypeState plus what the client is known to hold."""

    held: Mapping[str, Packed] = field(default_factory=lambda: EMPTY)  # what it acknowledged
    unknown: frozenset[str] = frozenset()  # names to send (or remove) regardless
    rejected: dict[str, str] = field(default_factory=dict)  # name -> version Envoy refused
    guilty: dict[str, str] = field(default_factory=dict)  # refused in a response of its own

    def retry_innocent(self) -> None:
        """The refused response's names changed: the rest may have been innocent and is
        sent again (each retry follows a change, so it never loops); what was refused in
        a response of its own stays refused."""
        self.rejected = {n: v for n, v in self.rejected.items() if self.guilty.get(n) == v}

    in_flight: frozenset[str] = frozenset()  # names the unacknowledged response carries
    in_flight_removed: frozenset[str] = frozenset()  # of those, the ones it removes
    refused_removals: frozenset[str] = frozenset()  # removals Envoy refused
    forced: frozenset[str] = frozenset()  # sent even at a refused version (a cluster changed)
    resend_all: bool = False  # "*" subscribed again: everything is due
    answer_due: bool = False  # a request waits for an answer, even an empty one
    waiting: bool = False  # newer content waits for the response in flight

    def status(self) -> str:
        if self.outstanding():
            return ERROR  # a refused resource is still wanted at the refused version
        status = super().status()
        return STALE if self.waiting and status != ERROR else status

    def outstanding(self) -> bool:
        """Whether a resource Envoy refused is still wanted at the version it refused."""
        sent = self.sent
        return any((p := sent.get(n)) is not None and p.hash == v for n, v in self.rejected.items())


def _declared(versions: Mapping[str, str]) -> dict[str, Packed]:
    """What a reconnecting client says it holds, to diff against: the versions are our
    hashes, so an unchanged resource compares equal (any other string never does)."""
    return {n: Packed(n, "", None, v) for n, v in versions.items()}


@dataclass
class DeltaStream(SotwStream):
    """Protocol state of one delta ADS stream."""

    api: ClassVar[str] = "delta"
    state_class: ClassVar[type[TypeState]] = DeltaTypeState
    types: dict[str, DeltaTypeState] = field(default_factory=dict)  # type: ignore[assignment]

    # ---- inputs -------------------------------------------------------------------------

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list:  # type: ignore[override]
        found = self._type_state(request.type_url)
        if found is None:
            return []
        state, first = found
        assert isinstance(state, DeltaTypeState)
        type_url = state.type_url
        subscribed = self._subscribe_delta(state, request, first)
        nonce = request.response_nonce
        out: list[Response] = []
        if nonce and nonce == state.sent_nonce and state.pending:
            state.pending = False
            if request.HasField("error_detail"):
                state.record_nack(request.error_detail.message)
                sent = state.sent
                carried = [n for n in state.in_flight - state.in_flight_removed if n in sent]
                for name in carried:
                    state.rejected[name] = sent[name].hash
                if len(carried) == 1:
                    # Refused alone: certainly at fault, never retried as innocent.
                    state.guilty[carried[0]] = sent[carried[0]].hash
                state.refused_removals = state.refused_removals | state.in_flight_removed
                # Envoy may have applied part of it: what it holds of these is unknown.
                state.unknown = state.unknown | state.in_flight
            else:
                state.acked_nonce = nonce
                state.acked_at = time.time()
                state.held = state.sent
                if state.rejected:
                    state.rejected = {
                        n: v
                        for n, v in state.rejected.items()
                        if (p := state.sent.get(n)) is not None and p.hash == v
                    }
                if state.guilty:
                    state.guilty = {
                        n: v
                        for n, v in state.guilty.items()
                        if (p := state.sent.get(n)) is not None and p.hash == v
                    }
                state.refused_removals = frozenset()
                if not state.outstanding():
                    # Accepted whole; with a refused resource still wanted, the client
                    # holds less than this version, which stays the refused one.
                    state.acked_version = state.sent_version
                    state.acked_generation = state.sent_generation
                    state.nacked_version = None
            state.in_flight = state.in_flight_removed = frozenset()
        # A first request, or one that subscribes, is answered even when the answer is
        # empty: the client waits for it (checklist 28, 37).
        out += self._respond_if_needed(state, force=first or subscribed)
        if type_url == CLUSTER and not state.pending:
            out += self._flush_deferred()
        out += self._finish_cluster_removal()
        return out

    # ---- internals ----------------------------------------------------------------------

    def _subscribe_delta(
        self, state: DeltaTypeState, request: discovery_pb2.DeltaDiscoveryRequest, first: bool
    ) -> bool:
        """Apply subscribe/unsubscribe; True when names were subscribed (they are due)."""
        subscribe = frozenset(request.resource_names_subscribe)
        unsubscribe = frozenset(request.resource_names_unsubscribe)
        if not first and not subscribe and not unsubscribe:
            return False  # an ACK or NACK: the subscription stays as it is
        wildcard = state.wildcard
        if "*" in subscribe and not first:
            state.resend_all = True  # the client may have dropped what it held
        if "*" in subscribe or (
            first and not subscribe and not unsubscribe and state.type_url in WILDCARD_TYPES
        ):
            wildcard = True
        if "*" in unsubscribe:
            wildcard = False
        named = subscribe - {"*"} if "*" in subscribe else subscribe
        if not state.names and not unsubscribe:
            names = named  # a first subscription: no copy of thousands of names
        else:
            names = (state.names | named) - unsubscribe
        state.wildcard, state.names = wildcard, _shared_names(names)
        if state.unknown and unsubscribe:
            state.unknown = state.unknown - unsubscribe
        if unsubscribe & state.rejected.keys():
            state.retry_innocent()
        for name in subscribe:
            # A refusal was about what the client watched then; asked again, it is sent.
            state.rejected.pop(name, None)
        if first and request.initial_resource_versions:
            state.held = _declared(request.initial_resource_versions)
        if named:
            # Named resources are sent even at the version the client declared
            # (envoy#22418), or holds: it may have lost them (checklist 38).
            state.unknown = state.unknown | named if state.unknown else named
        return bool(subscribe)

    def _respond_if_needed(  # type: ignore[override]
        self, state: DeltaTypeState, force: bool = False, partial: bool = False
    ) -> list:
        if state.pending:
            state.answer_due = state.answer_due or force
            state.waiting = True
            return []
        force = force or state.answer_due
        if not state.wildcard and not state.names and not state.unknown:
            state.answer_due = state.waiting = False
            return []
        if state.type_url in (LISTENER, ROUTE) and self._clusters_warming():
            state.deferred = True
            state.deferred_force = state.deferred_force or force
            return []
        content = self._content(state)
        if state.rejected:
            self._retry_innocent(state, content)
        changed, removed = self._diff(state, content)
        state.answer_due = state.waiting = False
        if not changed and not removed and not force:
            if content.version != state.sent_version:
                # The client already holds exactly this (a reconnect declared it).
                state.sent = state.held = content
                state.sent_version = state.acked_version = content.version
                state.sent_generation = state.acked_generation = self.generation
            return []
        return self._send(state, content, changed, removed)

    @staticmethod
    def _retry_innocent(state: DeltaTypeState, content: ResourceSet) -> None:
        """Envoy refuses a response whole, so every resource in it counts as refused; once
        one of them is no longer wanted at the refused version (it was fixed, or dropped),
        the others may have been innocent: they are sent again, and a second refusal
        marks the ones really at fault."""
        wanted = state.names if not state.wildcard else None
        still = {
            n: v
            for n, v in state.rejected.items()
            if (p := content.get(n)) is not None and p.hash == v and (wanted is None or n in wanted)
        }
        if len(still) < len(state.rejected):
            state.retry_innocent()

    def _content(self, state: TypeState) -> ResourceSet:  # type: ignore[override]
        """As SotW's, except that clusters kept while routes move off them are the ones
        the client holds (acknowledged), not the ones last sent: a cluster it refused is
        not kept, so never sent again for being kept."""
        content = self._desired(state)
        if state.type_url != CLUSTER or content.version == state.sent_version:
            return content
        assert isinstance(state, DeltaTypeState)
        held = state.held
        going = [
            n
            for n in _keys(held) - content.keys_set()
            if (p := held.get(n)) is not None and p.value is not None  # not merely declared
        ]
        others_busy = any(
            s.pending or self._differs(s) for s in self.types.values() if s.type_url != CLUSTER
        )
        self.deferred_cluster_removal = bool(going) and others_busy
        if self.deferred_cluster_removal:
            content = ResourceSet({n: held[n] for n in going}, base=content)
        return content

    def _clusters_warming(self) -> bool:
        """New clusters may be on their way: the response in flight adds some, or newer
        cluster content waits behind it (listeners and routes wait for both)."""
        clusters = self.types.get(CLUSTER)
        return (
            clusters is not None
            and clusters.pending
            and (clusters.adds_clusters or clusters.waiting)
        )

    def _differs(self, state: TypeState) -> bool:  # type: ignore[override]
        """Whether this type has something to send (what the removal of clusters waits
        for): refused resources and names no longer watched do not count."""
        if state.type_url not in PUSH_ORDER or not state.sent_nonce:
            return False
        if not state.wildcard and not state.names:
            return False
        assert isinstance(state, DeltaTypeState)
        changed, removed = self._diff(state, self._desired(state))
        return bool(changed) or bool(removed)

    def _diff(
        self, state: DeltaTypeState, content: ResourceSet
    ) -> tuple[ResourceSet, frozenset[str]]:
        """What the client lacks of `content`, and what it holds that `content` lacks."""
        held = state.held
        changed = content if state.resend_all else content.changed_since(held)
        removed = content.removed_since(held)
        if not state.wildcard:
            removed &= state.names
        if state.unknown:
            # Usually already part of the diff (a first subscription): then the shared
            # diff goes as it is, and its response body is serialized once for all.
            present = state.unknown & content.keys_set()
            extra = present - changed.keys_set()
            if extra:
                changed = ResourceSet({n: content[n] for n in extra}, base=changed)
            gone = state.unknown - present
            if not state.wildcard:
                gone &= state.names
            removed = removed | gone
        if state.refused_removals:
            removed = removed - state.refused_removals  # refused once: not again in a loop
        if state.rejected:
            refused = [
                n
                for n, v in state.rejected.items()
                if (p := changed.get(n)) is not None and p.hash == v and n not in state.forced
            ]
            if refused:  # refused at this version: wait for a different one
                changed = ResourceSet({n: p for n, p in changed.items() if n not in refused})
        return changed, removed

    def _send(
        self,
        state: DeltaTypeState,
        content: ResourceSet,
        changed: ResourceSet,
        removed: frozenset[str],
    ) -> list:
        version = content.version
        endpoints = self.types.get(ENDPOINT)
        if state.type_url == CLUSTER:
            state.adds_clusters = bool(content.keys_set() - _keys(state.held))
        sent = delta_response(state.type_url, version, changed, removed, self.control_plane_id)
        keys = changed.keys_set()
        state.in_flight = keys | removed if removed else keys
        state.in_flight_removed = removed
        state.resend_all = False
        if state.unknown:
            state.unknown = state.unknown - state.in_flight
        if state.forced:
            state.forced = state.forced - state.in_flight
        state.sent = content
        state.sent_version = version
        state.sent_nonce = sent.nonce
        state.sent_generation = self.generation
        state.pending = True
        state.responses_sent += 1
        state.bytes_sent += len(sent.body)
        out = [sent]
        if state.type_url == CLUSTER and endpoints is not None and endpoints.sent_nonce:
            # A changed cluster warms until it gets its assignment again, even an unchanged
            # one (SotW does the same).
            updated = set(changed.keys_set() & _keys(state.held)) if state.held else set()
            if not endpoints.wildcard:
                updated &= endpoints.names
            if updated:
                endpoints.unknown = endpoints.unknown | updated
                endpoints.forced = endpoints.forced | updated
                out += self._respond_if_needed(endpoints)
        return out
