"""Adversarial tests of the delta ADS state machine (xds_server.ads.delta).

Targeted cases for subscription transitions, NACKs, deferrals and status, plus a model-based
Hypothesis test: a simulated Envoy that applies each response (resources and
removed_resources) to its own map, NACKs responses carrying a bad resource, and reconnects
with initial_resource_versions; once the desired content is all good and the client has
answered everything, what it holds must equal what it asked for.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.test_delta_state import ack, decode, request, sent, started
from tests.test_sotw_state import resources
from translators import resources as resources_module
from translators.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet, pack, pack_all
from xds_server.ads import sotw as sotw_module
from xds_server.ads.delta import DeltaStream
from xds_server.ads.sotw import ERROR, STALE, SYNCED


def nack(response, message="refused"):
    return request(response.type_url, nonce=response.nonce, error=message)


def synced(stream: DeltaStream, *types) -> None:
    """First requests for `types` (wildcard for CDS/LDS, the resources() names for the
    others), each answered and ACKed, every response along the way ACKed."""
    names = {ENDPOINT: ["a", "b"], ROUTE: ["r"]}
    for type_url in types:
        queue = list(stream.on_request(request(type_url, names.get(type_url, ()))))
        while queue:
            queue += stream.on_request(ack(queue.pop(0)))


# ---- subscription transitions ---------------------------------------------------------------


def test_subscribing_star_again_resends_the_wildcard_resources():
    """After unsubscribing "*" the client may have dropped what it held (it no longer watches
    those names); subscribing "*" again is a subscription like a named one, and named ones are
    sent again even when the server thinks the client holds them (checklist 38)."""
    stream = started(resources(clusters=("a", "b")))
    synced(stream, CLUSTER)
    assert stream.on_request(request(CLUSTER, unsubscribe=["*"])) == []
    (again,) = stream.on_request(request(CLUSTER, subscribe=["*"]))
    assert sent(again) == (["a", "b"], [])


def test_named_subscription_added_to_a_legacy_wildcard_keeps_the_wildcard():
    stream = started(resources(clusters=("a", "b")))
    synced(stream, CLUSTER)
    (named,) = stream.on_request(request(CLUSTER, subscribe=["a"]))
    assert sent(named) == (["a"], [])  # subscribed again: sent again
    stream.on_request(ack(named))
    (push,) = stream.set_resources(resources(clusters=("a", "b", "c")), 2)
    assert sent(push) == (["c"], [])  # still a wildcard


def test_unsubscribing_a_name_in_flight_then_resubscribing_before_the_ack_sends_it_again():
    stream = started(resources(clusters=("a", "b")))
    (first,) = stream.on_request(request(ENDPOINT, ["a", "b"]))
    assert stream.on_request(request(ENDPOINT, unsubscribe=["b"])) == []
    assert stream.on_request(request(ENDPOINT, ["b"])) == []  # one response in flight
    (again,) = stream.on_request(ack(first))
    assert sent(again) == (["b"], [])
    stream.on_request(ack(again))
    assert stream.types[ENDPOINT].status() == SYNCED


def test_a_stale_nonce_still_changes_the_subscription():
    stream = started(resources(clusters=("a", "b")))
    (first,) = stream.on_request(request(ENDPOINT, ["a"]))
    stream.on_request(ack(first))
    (out,) = stream.on_request(request(ENDPOINT, ["b"], nonce="12345-stale"))
    assert sent(out) == (["b"], [])


def test_a_stale_nack_is_ignored():
    stream = started(resources(clusters=("a",)))
    (first,) = stream.on_request(request(CLUSTER))
    stream.on_request(ack(first))
    assert stream.on_request(request(CLUSTER, nonce="999999", error="old")) == []
    assert stream.types[CLUSTER].status() == SYNCED and stream.types[CLUSTER].nacks == 0


# ---- NACKs ----------------------------------------------------------------------------------


def test_a_nacked_removal_is_not_resent_in_a_loop():
    """Checklist 10/41: after a NACK nothing goes out again until the content changes. A
    response that only removes a name, NACKed, is answered by the same removal, again and
    again, for as long as the client keeps refusing it."""
    stream = started(resources(clusters=("a", "x")))
    synced(stream, CLUSTER)
    (removal,) = stream.set_resources(resources(clusters=("a",)), 2)
    assert sent(removal) == ([], ["x"])
    assert stream.on_request(nack(removal)) == []


def test_status_is_not_synced_while_a_refused_resource_is_still_wanted():
    """After a NACK of `bad`, an unrelated change goes out and is ACKed; the client still
    lacks `bad` (refused, never resent), so the type is not SYNCED."""
    stream = started(resources(clusters=("a",)))
    synced(stream, CLUSTER)
    (push,) = stream.set_resources(resources(clusters=("a", "bad")), 2)
    stream.on_request(nack(push))
    assert stream.types[CLUSTER].status() == ERROR
    (later,) = stream.set_resources(resources(clusters=("a", "bad", "c")), 3)
    assert sent(later) == (["c"], [])
    stream.on_request(ack(later))
    assert stream.types[CLUSTER].status() == ERROR


def test_nack_then_subscribe_a_new_name_sends_only_the_new_name():
    stream = started(resources(clusters=("a", "b", "c")))
    (first,) = stream.on_request(request(ENDPOINT, ["a"]))
    stream.on_request(ack(first))
    changed = resources(clusters=("a", "b", "c"))
    changed[ENDPOINT] = pack_all(
        endpoint_pb2.ClusterLoadAssignment(cluster_name=c, endpoints=[{}]) for c in ("a", "b", "c")
    )
    (push,) = stream.set_resources(changed, 2)
    assert stream.on_request(nack(push)) == []
    (more,) = stream.on_request(request(ENDPOINT, ["b"]))
    assert sent(more) == (["b"], [])  # not the refused `a` again
    stream.on_request(ack(more))
    assert stream.types[ENDPOINT].status() == ERROR or stream.types[ENDPOINT].rejected


def test_nack_then_content_change_then_ack_is_synced_once_the_refused_one_is_replaced():
    stream = started(resources(clusters=("a",)))
    synced(stream, CLUSTER)
    (push,) = stream.set_resources(resources(clusters=("a", "bad")), 2)
    stream.on_request(nack(push))
    fixed = resources(clusters=("a",))
    fixed[CLUSTER] = pack_all(
        [
            cluster_pb2.Cluster(name="a"),
            cluster_pb2.Cluster(name="bad", connect_timeout={"seconds": 1}),
        ]
    )
    (again,) = stream.set_resources(fixed, 3)
    assert sent(again) == (["bad"], [])
    stream.on_request(ack(again))
    assert stream.types[CLUSTER].status() == SYNCED and not stream.types[CLUSTER].rejected


def test_a_refused_name_unsubscribed_and_subscribed_again_is_sent():
    """The route (or CLA) `b` was refused; Envoy drops its listener (unsubscribes `b`) and
    later adds it back (subscribes `b`). The rejection is about a response the client no
    longer watches; the answer to the new subscription carries neither `b` nor a removal
    of it, so Envoy waits for it until initial_fetch_timeout (15 s)."""
    stream = started(resources(clusters=("a", "b")))
    (first,) = stream.on_request(request(ENDPOINT, ["a", "b"]))
    stream.on_request(nack(first))
    # The refused response's names changed: `a` may have been innocent, and is retried.
    (retry,) = stream.on_request(request(ENDPOINT, unsubscribe=["b"]))
    assert sent(retry) == (["a"], [])
    stream.on_request(ack(retry))
    (again,) = stream.on_request(request(ENDPOINT, ["b"]))
    carried, removed = sent(again)
    assert "b" in carried or "b" in removed


# ---- ordering: removal deferral, warming ----------------------------------------------------


def test_cluster_removal_is_not_deferred_forever_by_a_type_with_no_subscription():
    """A gateway loses its listener; Envoy unsubscribes its last route name. Later a cluster
    is removed: RDS watches nothing, so nothing is busy, yet `_differs(RDS)` compares the
    empty subscription's version with what was last sent and is true forever, so the
    removal is deferred on every try (sotw.py `_content` / `_differs`)."""
    stream = started(resources(clusters=("a", "b"), listeners=("l",)))
    synced(stream, CLUSTER, ENDPOINT, LISTENER, ROUTE)
    (lds,) = stream.set_resources(resources(clusters=("a", "b"), listeners=()), 2)
    assert sent(lds) == ([], ["l"])
    stream.on_request(ack(lds))
    assert stream.on_request(request(ROUTE, unsubscribe=["r"])) == []
    out = stream.set_resources(resources(clusters=("a",), listeners=()), 3)
    out += [r for response in list(out) for r in stream.on_request(ack(response))]
    removed = [n for r in out if r.type_url == CLUSTER for n in sent(r)[1]]
    assert removed == ["b"]


def test_cluster_removal_is_not_deferred_forever_after_an_eds_nack_and_an_unsubscribe():
    """An EDS push is NACKed; Envoy then unsubscribes one of its names. The desired EDS
    content (a subset of the names) now differs from both sent_version and nacked_version,
    yet nothing is sent (all of it is `rejected`), and delta.py `_respond_if_needed` does not
    record the new version when `state.rejected` is non-empty, so `_differs(EDS)` stays
    true and every later cluster removal is deferred for as long as EDS content stays put."""
    stream = started(resources(clusters=("a", "b", "c")))
    synced(stream, CLUSTER)
    (first,) = stream.on_request(request(ENDPOINT, ["a", "b"]))
    stream.on_request(ack(first))
    changed = resources(clusters=("a", "b", "c"))
    changed[ENDPOINT] = pack_all(
        endpoint_pb2.ClusterLoadAssignment(cluster_name=c, endpoints=[{}]) for c in ("a", "b", "c")
    )
    (push,) = stream.set_resources(changed, 2)
    stream.on_request(nack(push))
    (retry,) = stream.on_request(request(ENDPOINT, unsubscribe=["b"]))  # `a` retried
    assert sent(retry) == (["a"], [])
    stream.on_request(nack(retry))  # `a` was at fault after all
    fewer = dict(changed)
    fewer[CLUSTER] = pack_all(cluster_pb2.Cluster(name=n) for n in ("a", "b"))
    out = stream.set_resources(fewer, 3)
    out += [r for response in list(out) for r in stream.on_request(ack(response))]
    assert [n for r in out if r.type_url == CLUSTER for n in sent(r)[1]] == ["c"]


def test_routes_to_a_new_cluster_wait_while_it_queues_behind_a_cluster_response_in_flight():
    """Checklist 30. A change of cluster `a` is in flight (not ACKed: `a` warms); the next
    generation adds cluster `b` and points route `r` at it. CDS is one-in-flight, so `b`
    waits; `_clusters_warming()` (sotw.py) only asks whether the response *in flight*
    adds clusters - it does not - so RDS goes out at once, naming a cluster Envoy has
    never been sent: 503 NC until `b` arrives. SotW sends `b` at once and holds RDS."""
    stream = started(resources(clusters=("a",), route_target="a"))
    synced(stream, CLUSTER, ENDPOINT, LISTENER, ROUTE)
    changed = resources(clusters=("a",), route_target="a")
    changed[CLUSTER] = pack_all([cluster_pb2.Cluster(name="a", connect_timeout={"seconds": 3})])
    out = stream.set_resources(changed, 2)
    assert [r.type_url for r in out] == [CLUSTER, ENDPOINT]  # `a` warms until its CLA...
    stream.on_request(ack(out[1]))  # ...EDS is ACKed, CDS not yet
    added = resources(clusters=("a", "b"), route_target="b")
    added[CLUSTER] = pack_all(
        [
            cluster_pb2.Cluster(name="a", connect_timeout={"seconds": 3}),
            cluster_pb2.Cluster(name="b"),
        ]
    )
    out = stream.set_resources(added, 3)
    assert ROUTE not in [r.type_url for r in out], "a route to b before cluster b"


def test_listeners_deferred_while_clusters_warm_follow_a_nack_of_the_clusters():
    stream = started(resources(clusters=("a",)))
    synced(stream, CLUSTER, LISTENER)
    (cds,) = stream.set_resources(resources(clusters=("a", "b"), listeners=("l", "m")), 2)
    assert stream.types[LISTENER].status() == STALE
    (lds,) = stream.on_request(nack(cds))
    assert lds.type_url == LISTENER and sent(lds) == (["m"], [])


def test_a_changed_cluster_gets_its_assignment_again_even_with_eds_in_flight():
    stream = started(resources(clusters=("a",)))
    synced(stream, CLUSTER)
    (eds,) = stream.on_request(request(ENDPOINT, ["a"]))  # not ACKed yet
    changed = resources(clusters=("a",))
    changed[CLUSTER] = pack_all([cluster_pb2.Cluster(name="a", connect_timeout={"seconds": 3})])
    (cds,) = stream.set_resources(changed, 2)
    assert cds.type_url == CLUSTER
    (again,) = stream.on_request(ack(eds))
    assert again.type_url == ENDPOINT and sent(again) == (["a"], [])


def test_a_changed_cluster_gets_its_assignment_even_when_the_eds_in_flight_is_nacked():
    """Cluster `a` changes while an EDS response carrying a' (good) and b' (bad) is in
    flight: `a` is queued in endpoints.unknown to be sent again (delta.py `_send`). The NACK
    then marks a' rejected at that very hash, `_diff` drops it, and the updated cluster `a`
    never gets its assignment: it warms until initial_fetch_timeout (checklist 24)."""
    stream = started(resources(clusters=("a", "b")))
    synced(stream, CLUSTER, ENDPOINT)
    moved = resources(clusters=("a", "b"))
    moved[ENDPOINT] = pack_all(
        endpoint_pb2.ClusterLoadAssignment(cluster_name=c, endpoints=[{}]) for c in ("a", "b")
    )
    (eds,) = stream.set_resources(moved, 2)
    assert sent(eds) == (["a", "b"], [])
    updated = dict(moved)
    updated[CLUSTER] = pack_all(
        [
            cluster_pb2.Cluster(name="a", connect_timeout={"seconds": 3}),
            cluster_pb2.Cluster(name="b"),
        ]
    )
    (cds,) = stream.set_resources(updated, 3)
    assert sent(cds) == (["a"], [])
    out = stream.on_request(nack(eds, "b is bad"))
    assert [(r.type_url, sent(r)) for r in out] == [(ENDPOINT, (["a"], []))]


# ---- reconnect ------------------------------------------------------------------------------


@given(
    st.dictionaries(
        st.text(max_size=12),
        st.one_of(st.text(max_size=20), st.just("ffffffffffffffffffffffffffffffff"), st.just("")),
        max_size=30,
    )
)
@settings(max_examples=150, deadline=None)
def test_garbage_initial_versions_never_raise_and_converge(declared):
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        stream = started(resources(clusters=("a", "b"), listeners=("l",)))
        names = ["a", "zz"] if type_url == ENDPOINT else ["r"] if type_url == ROUTE else []
        (first,) = stream.on_request(request(type_url, names, initial=declared))
        carried, removed = sent(first)
        stream.on_request(ack(first))
        want = stream._desired(stream.types[type_url])
        held = {n: v for n, v in declared.items()}
        for r in decode(first).resources:
            held[r.name] = r.version
        for n in removed:
            held.pop(n, None)
        if type_url in (CLUSTER, LISTENER):
            assert held == {n: p.hash for n, p in want.items()}
        else:
            assert {n: held.get(n) for n in names} == {
                n: (want[n].hash if n in want else None) for n in names
            }


def test_clusters_subscribed_by_name_are_resent_on_reconnect():
    """Checklist 39(c): explicitly subscribed names are sent even at the declared version.
    delta.py `_subscribe_delta` does so only for types outside WILDCARD_TYPES, so CDS or LDS
    subscribed by name (on-demand CDS, non-Envoy delta clients) is skipped."""
    old = started(resources(clusters=("a", "b")))
    (first,) = old.on_request(request(CLUSTER, ["a"]))
    held = {r.name: r.version for r in decode(first).resources}
    new = started(resources(clusters=("a", "b")))
    (answer,) = new.on_request(request(CLUSTER, ["a"], initial=held))
    assert sent(answer) == (["a"], [])


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: a reconnect's first CDS answer removes declared clusters that "
    "are gone before LDS/RDS are asked for (SotW cannot avoid it either); keeping them "
    "means holding declared versions the server has no resource for",
)
def test_a_reconnect_does_not_remove_clusters_before_the_routes_moved_off_them():
    """Checklist 31 on reconnect: the client declares cluster `old`, which its held routes
    still use; the first CDS answer removes it at once, before LDS/RDS were even asked for.
    (SotW cannot avoid this - its first answer is the full state - delta can.)"""
    old = started(resources(clusters=("a", "old"), route_target="old"))
    (cds,) = old.on_request(request(CLUSTER))
    held = {r.name: r.version for r in decode(cds).resources}
    new = started(resources(clusters=("a",), route_target="a"))
    (answer,) = new.on_request(request(CLUSTER, initial=held))
    assert "old" not in sent(answer)[1]


def test_initial_versions_for_names_not_subscribed_are_not_removed():
    stream = started(resources(clusters=("a", "b")))
    (first,) = stream.on_request(request(ENDPOINT, ["a"], initial={"a": "x", "other": "y"}))
    assert sent(first) == (["a"], [])


def _retained_after(fn) -> int:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fn()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before


def test_a_closed_stream_does_not_leave_its_declared_versions_in_memory():
    """initial_resource_versions of a wildcard type become `held`, a plain dict that
    ResourceSet.changed_since/removed_since memoise by identity (strong references, 512
    entries each), and the names it declares that are gone become the `removed` frozenset in
    the key of responses.BODIES, whose 256 MB limit counts only the body bytes (~10 bytes a
    name, against ~115 for the key). A closed stream keeps all of it; with 64 MB requests
    allowed (ServerOptions.max_message_mb) a few hundred reconnects carrying a big map of
    made-up names pin gigabytes."""
    res = resources(clusters=("a",))

    def reconnects():
        for i in range(20):
            stream = started(res)
            declared = {f"n{i}-{k}": "0" for k in range(5000)}
            stream.on_request(request(CLUSTER, initial=declared))
            del stream, declared

    retained = _retained_after(reconnects)
    resources_module._CHANGES.clear()
    resources_module._REMOVALS.clear()
    assert retained < 2_000_000, f"{retained} bytes retained by closed streams"


def test_subscribing_names_one_at_a_time_does_not_pin_every_intermediate_set():
    """Each request that adds one name makes a new frozenset of all names so far; the
    module-wide `_NAME_SETS` (sotw.py `_shared_names`) keeps the last 1024 of them, so one
    client adding n names one by one pins ~n^2/2 set slots while its stream is open and
    after it closes."""
    res = resources(clusters=("a",))

    def subscribe_one_by_one():
        stream = started(res)
        stream.on_request(request(ENDPOINT, ["n0"]))
        for k in range(1, 1000):
            stream.on_request(request(ENDPOINT, [f"n{k}"]))
        del stream

    retained = _retained_after(subscribe_one_by_one)
    sotw_module._NAME_SETS.clear()
    assert retained < 5_000_000, f"{retained} bytes retained by one closed stream"


def test_requests_that_change_nothing_do_not_cost_as_much_as_the_subscription():
    """With a large subscription, every request - even an empty one with a stale nonce, or
    an unsubscribe of a name not subscribed - rebuilds the whole name set
    (delta.py `_subscribe_delta`: `(state.names | subscribe) - unsubscribe - {"*"}`) and
    hashes/compares it in `_shared_names` and the subset memo: O(names) on the event loop
    per request of a few bytes. 30 such requests cost more than subscribing to all the
    names in the first place."""
    import time

    stream = started(resources(clusters=("a",)))
    names = [f"outbound|80||svc-{k}.ns.svc.cluster.local" for k in range(100_000)]
    begin = time.perf_counter()
    (first,) = stream.on_request(request(ENDPOINT, names))
    subscribing = time.perf_counter() - begin
    stream.on_request(ack(first))
    begin = time.perf_counter()
    for _ in range(30):
        stream.on_request(request(ENDPOINT, nonce="stale"))
    idle = time.perf_counter() - begin
    assert idle < subscribing, f"30 empty requests {idle:.2f}s, the subscription {subscribing:.2f}s"


# ---- memo caches ----------------------------------------------------------------------------


def _cluster(name: str, seconds: int):
    return pack(name, cluster_pb2.Cluster(name=name, connect_timeout={"seconds": seconds}))


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.booleans()), max_size=60))
@settings(max_examples=100, deadline=None)
def test_memoised_diffs_match_a_fresh_computation_when_ids_are_recycled(steps):
    """Sets are made and dropped so their ids get reused; changed_since/removed_since/subset
    must still answer for the objects asked about."""
    for a, b, plain in steps:
        old = {f"c{i}": _cluster(f"c{i}", a + i % 2) for i in range(a)}
        new = ResourceSet({f"c{i}": _cluster(f"c{i}", b) for i in range(b)})
        previous = old if plain else ResourceSet(old)
        changed = new.changed_since(previous)
        want = {n: p for n, p in new.items() if n not in old or old[n].hash != p.hash}
        assert dict(changed) == want
        assert new.removed_since(previous) == frozenset(old) - frozenset(new)
        names = frozenset(f"c{i}" for i in range(0, 6, 2))
        assert dict(new.subset(names)) == {n: new[n] for n in names if n in new}
        del old, new, previous, changed


# ---- model-based ----------------------------------------------------------------------------

BAD: set[str] = set()  # hashes a simulated Envoy refuses


def _packed(type_url: str, name: str, variant: int):
    """Variant 2 of anything is one the client refuses."""
    if type_url == CLUSTER:
        message = cluster_pb2.Cluster(name=name, connect_timeout={"seconds": variant + 1})
    elif type_url == ENDPOINT:
        message = endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, endpoints=[{}] * (variant + 1)
        )
    elif type_url == LISTENER:
        message = listener_pb2.Listener(name=name, stat_prefix=str(variant))
    else:
        message = route_pb2.RouteConfiguration(
            name=name, virtual_hosts=[{"name": "v", "domains": [str(variant)]}]
        )
    packed = pack(name, message)
    if variant == 2:
        BAD.add(packed.hash)
    return packed


NAMES = {
    CLUSTER: ["a", "b", "c"],
    ENDPOINT: ["a", "b", "c"],
    LISTENER: ["l", "m"],
    ROUTE: ["r", "s"],
}
TYPES = list(NAMES)

content = st.fixed_dictionaries(
    {t: st.dictionaries(st.sampled_from(NAMES[t]), st.integers(0, 2)) for t in TYPES}
)
op = st.one_of(
    st.tuples(st.just("set"), content),
    st.tuples(st.just("answer"), st.integers(0, 3)),
    st.tuples(
        st.just("sub"),
        st.sampled_from([ENDPOINT, ROUTE]),
        st.sampled_from(NAMES[ENDPOINT] + NAMES[ROUTE]),
    ),
    st.tuples(
        st.just("unsub"),
        st.sampled_from([ENDPOINT, ROUTE]),
        st.sampled_from(NAMES[ENDPOINT] + NAMES[ROUTE]),
    ),
    st.tuples(st.just("reconnect")),
    st.tuples(st.just("stale"), st.sampled_from(TYPES)),
)


def _resources(spec) -> dict:
    return {t: {n: _packed(t, n, v) for n, v in spec[t].items()} for t in TYPES}


class Envoy:
    """A client that applies every response: removals, then each resource it can accept;
    a response carrying a refused one is NACKed (the rest applied, as Envoy does)."""

    def __init__(self) -> None:
        self.held: dict[str, dict[str, str]] = {t: {} for t in TYPES}
        self.subscribed: dict[str, set[str]] = {ENDPOINT: {"a"}, ROUTE: {"r"}}
        self.refused: set[tuple[str, str]] = set()
        # Refused versions sent again since the last change: the server cannot tell which
        # resource of a refused response was at fault, so once the others are fixed or
        # gone it retries the rest; a second retry without a change would be a loop.
        self.retried: set[tuple[str, str]] = set()

    def changed(self) -> None:
        """The desired content or the subscription changed: one more retry is fair."""
        self.retried = set()

    def connect(self, stream: DeltaStream, inbox: list) -> None:
        self.refused = set()  # a new stream knows nothing of refusals (checklist 40)
        for t in TYPES:
            names = sorted(self.subscribed.get(t, ()))
            inbox += stream.on_request(request(t, names, initial=dict(self.held[t])))

    def answer(self, stream: DeltaStream, response):
        message = decode(response)
        t = message.type_url
        watched = self.subscribed.get(t)
        names = [r.name for r in message.resources]
        assert len(set(names)) == len(names), "a name twice in one response"
        assert not set(names) & set(message.removed_resources), "added and removed at once"
        for name in message.removed_resources:
            self.held[t].pop(name, None)
            self.refused = {(n, v) for n, v in self.refused if n != name}
        bad = False
        for r in message.resources:
            if (r.name, r.version) in self.refused:
                assert (r.name, r.version) not in self.retried, f"refused {r.name} sent again"
                self.retried.add((r.name, r.version))
            # (a version refused before another version of the name may come back later)
            self.refused = {(n, v) for n, v in self.refused if n != r.name}
            if watched is not None and r.name not in watched:
                continue  # no longer watched: ignored
            if r.version in BAD:
                self.refused.add((r.name, r.version))
                bad = True
            else:
                self.held[t][r.name] = r.version
                self.refused = {(n, v) for n, v in self.refused if n != r.name}
        return stream.on_request(nack(response) if bad else ack(response))

    def unsubscribe(self, t: str, name: str) -> None:
        self.subscribed[t].discard(name)
        self.held[t].pop(name, None)  # Envoy drops what it no longer watches


def _spec(**types):
    keys = {"cds": CLUSTER, "eds": ENDPOINT, "lds": LISTENER, "rds": ROUTE}
    return {t: types.get(k, {}) for k, t in keys.items()}


@given(st.lists(op, max_size=40), content)
@example(  # found by Hypothesis: a refused cluster, kept while routes moved, was resent
    ops=[
        ("set", _spec(cds={"b": 2, "c": 0}, rds={"r": 0})),
        ("answer", 0),
        ("answer", 0),
        ("answer", 0),
        ("set", _spec(cds={"c": 1})),
    ],
    final=_spec(cds={"c": 0}),
)
@example(  # found by Hypothesis: an EDS NACK, then an unsubscribe; ERROR for ever after
    ops=[
        ("set", _spec()),
        ("set", _spec(eds={"a": 0, "b": 2})),
        ("sub", ENDPOINT, "b"),
        ("reconnect",),
        ("answer", 0),
        ("answer", 0),
        ("unsub", ENDPOINT, "b"),
    ],
    final=_spec(eds={"a": 0}),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_model_client_converges(ops, final):
    for t in TYPES:  # the final content is all good
        final[t] = {n: v % 2 for n, v in final[t].items()}
    generation = 1
    spec = {t: {n: 0 for n in NAMES[t][:1]} for t in TYPES}
    stream = DeltaStream("node")
    stream.set_resources(_resources(spec), generation)
    envoy = Envoy()
    inbox: list = []
    envoy.connect(stream, inbox)
    for step in ops:
        kind = step[0]
        if kind == "set":
            generation += 1
            spec = step[1]
            envoy.changed()
            inbox += stream.set_resources(_resources(spec), generation)
        elif kind == "answer":
            for _ in range(step[1] + 1):
                if inbox:
                    inbox += envoy.answer(stream, inbox.pop(0))
        elif kind in ("sub", "unsub"):
            t, name = step[1], step[2]
            if name not in NAMES[t]:
                continue
            envoy.changed()
            if kind == "sub":
                envoy.subscribed[t].add(name)
                inbox += stream.on_request(request(t, [name]))
            elif envoy.subscribed[t] - {name}:
                # (never the last name: see test_cluster_removal_is_not_deferred_forever...)
                envoy.unsubscribe(t, name)
                inbox += stream.on_request(request(t, unsubscribe=[name]))
        elif kind == "stale":  # a request with an unknown nonce: changes nothing
            inbox += stream.on_request(request(step[1], nonce="stale"))
        else:  # the stream breaks; what was in flight is lost
            inbox.clear()
            stream = DeltaStream("node")
            stream.set_resources(_resources(spec), generation)
            envoy.connect(stream, inbox)
    generation += 1
    envoy.changed()
    inbox += stream.set_resources(_resources(final), generation)
    for _ in range(200):
        if not inbox:
            break
        inbox += envoy.answer(stream, inbox.pop(0))
    assert not inbox, "the server never goes quiet"
    desired = _resources(final)
    for t in TYPES:
        want = {n: p.hash for n, p in desired[t].items()}
        if t in envoy.subscribed:
            want = {n: h for n, h in want.items() if n in envoy.subscribed[t]}
        assert envoy.held[t] == want, (t, envoy.held[t], want)
        assert stream.types[t].status() == SYNCED, (t, stream.types[t])


# ---- model-based: make before break --------------------------------------------------------

TARGET: dict[str, str] = {}  # route hash -> the cluster it sends to


def _route(name: str, target: str, variant: int):
    packed = pack(
        name,
        route_pb2.RouteConfiguration(
            name=name,
            virtual_hosts=[
                {
                    "name": target,
                    "domains": [str(variant)],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": target}}],
                }
            ],
        ),
    )
    TARGET[packed.hash] = target
    if variant == 2:
        BAD.add(packed.hash)
    return packed


@st.composite
def linked(draw, bad_routes=True):
    clusters = draw(st.dictionaries(st.sampled_from("abc"), st.integers(0, 1), min_size=1))
    routes = draw(
        st.dictionaries(
            st.sampled_from(["r", "s"]),
            st.tuples(st.sampled_from(sorted(clusters)), st.integers(0, 2 if bad_routes else 1)),
        )
    )
    return clusters, routes


def _linked_resources(spec) -> dict:
    clusters, routes = spec
    return {
        CLUSTER: {n: _packed(CLUSTER, n, v) for n, v in clusters.items()},
        ENDPOINT: {n: _packed(ENDPOINT, n, 0) for n in clusters},
        LISTENER: {"l": _packed(LISTENER, "l", 0)},
        ROUTE: {n: _route(n, t, v) for n, (t, v) in routes.items()},
    }


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("set"), linked()),
            st.tuples(st.just("answer"), st.integers(0, 3)),
        ),
        max_size=40,
    ),
    linked(bad_routes=False),
)
@example(  # found by Hypothesis: see test_routes_to_a_new_cluster_wait_while_it_queues_behind...
    ops=[("answer", 0), ("set", ({"a": 0}, {})), ("set", ({"a": 1}, {}))],
    final=({"b": 0}, {"r": ("b", 0)}),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_model_routes_never_point_at_clusters_the_client_lacks(ops, final):
    """Checklist 30/31: after every response the client applies, each route it holds sends
    to a cluster it holds (clusters before the routes that use them; clusters removed only
    after the routes moved off them), unless the client refused a route (its old one stays)."""
    stream = DeltaStream("node")
    spec = ({"a": 0}, {"r": ("a", 0)})
    stream.set_resources(_linked_resources(spec), 1)
    envoy = Envoy()
    envoy.subscribed = {ENDPOINT: {"a", "b", "c"}, ROUTE: {"r", "s"}}
    inbox: list = []
    envoy.connect(stream, inbox)

    def answer_one():
        response = inbox.pop(0)
        inbox.extend(envoy.answer(stream, response))
        if envoy.refused:
            return
        for name, version in envoy.held[ROUTE].items():
            target = TARGET[version]
            assert target in envoy.held[CLUSTER], (
                f"route {name} -> {target}, client holds clusters {sorted(envoy.held[CLUSTER])}"
            )

    generation = 1
    for step in ops:
        if step[0] == "set":
            generation += 1
            envoy.changed()
            inbox += stream.set_resources(_linked_resources(step[1]), generation)
        else:
            for _ in range(step[1] + 1):
                if inbox:
                    answer_one()
    generation += 1
    envoy.changed()
    inbox += stream.set_resources(_linked_resources(final), generation)
    for _ in range(200):
        if not inbox:
            break
        answer_one()
    assert not inbox
