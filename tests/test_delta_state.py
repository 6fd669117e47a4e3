"""The delta stream state machine, without a network (checklist section 7)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from tests.test_sotw_state import resources
from translators.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, pack_all
from xds_server.ads.delta import DeltaStream
from xds_server.ads.sotw import ERROR, STALE, SYNCED


def request(type_url, subscribe=(), unsubscribe=(), nonce="", initial=None, error=None):
    req = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return req


def decode(response) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse.FromString(response.wire())


def sent(response) -> tuple[list[str], list[str]]:
    """(names carried, names removed) of one response."""
    message = decode(response)
    return [r.name for r in message.resources], list(message.removed_resources)


def ack(response):
    return request(response.type_url, nonce=response.nonce)


def started(res=None) -> DeltaStream:
    stream = DeltaStream("node")
    stream.set_resources(res or resources(), 1)
    return stream


def test_wildcard_first_request_gets_everything_then_only_what_changes():
    stream = started(resources(clusters=("a", "b")))
    (first,) = stream.on_request(request(CLUSTER))
    assert sent(first) == (["a", "b"], [])
    message = decode(first)
    assert all(r.version for r in message.resources) and message.system_version_info
    assert stream.on_request(ack(first)) == []
    (added,) = stream.set_resources(resources(clusters=("a", "b", "c")), 2)
    assert sent(added) == (["c"], [])
    stream.on_request(ack(added))
    (removed,) = stream.set_resources(resources(clusters=("a", "c")), 3)
    assert sent(removed) == ([], ["b"])
    stream.on_request(ack(removed))
    assert stream.types[CLUSTER].status() == SYNCED


def test_an_empty_first_answer_is_still_sent():
    stream = started({CLUSTER: {}, ENDPOINT: {}, LISTENER: {}, ROUTE: {}})
    (first,) = stream.on_request(request(LISTENER))
    assert sent(first) == ([], []) and first.nonce


def test_subscribed_names_that_do_not_exist_are_removed_and_sent_when_they_appear():
    stream = started()
    (answer,) = stream.on_request(request(ENDPOINT, ["a", "later"]))
    assert sent(answer) == (["a"], ["later"])
    stream.on_request(ack(answer))
    (appeared,) = stream.set_resources(resources(clusters=("a", "later")), 2)
    assert sent(appeared) == (["later"], [])  # still subscribed: no new request needed


def test_a_name_subscribed_again_is_sent_again_and_unsubscribed_names_are_not_pushed():
    stream = started(resources(clusters=("a", "b")))
    (answer,) = stream.on_request(request(ENDPOINT, ["a", "b"]))
    stream.on_request(ack(answer))
    assert stream.on_request(request(ENDPOINT, unsubscribe=["b"])) == []
    changed = resources(clusters=("a", "b"))
    changed[ENDPOINT] = pack_all(
        endpoint_pb2.ClusterLoadAssignment(cluster_name=c, endpoints=[{}]) for c in ("a", "b")
    )
    (push,) = stream.set_resources(changed, 2)
    assert sent(push) == (["a"], [])  # b is no longer watched
    stream.on_request(ack(push))
    (again,) = stream.on_request(request(ENDPOINT, ["b"]))
    assert sent(again) == (["b"], [])


def test_a_nack_is_not_resent_and_the_next_change_goes_alone():
    stream = started(resources(clusters=("a",)))
    (first,) = stream.on_request(request(CLUSTER))
    stream.on_request(ack(first))
    bad = resources(clusters=("a", "bad"))
    (push,) = stream.set_resources(bad, 2)
    assert sent(push) == (["bad"], [])
    assert stream.on_request(request(CLUSTER, nonce=push.nonce, error="bad cluster")) == []
    assert stream.types[CLUSTER].status() == ERROR
    assert stream.set_resources(bad, 3) == []  # the same content: never sent again
    (later,) = stream.set_resources(resources(clusters=("a", "bad", "c")), 4)
    assert sent(later) == (["c"], [])  # the rest, without the refused one
    stream.on_request(ack(later))
    (fixed,) = stream.set_resources(resources(clusters=("a", "c")), 5)
    assert sent(fixed) == ([], ["bad"])  # Envoy may hold part of it: removed explicitly
    stream.on_request(ack(fixed))
    assert stream.types[CLUSTER].status() == SYNCED


def test_reconnect_declares_what_the_client_holds():
    old = started(resources(clusters=("a", "b", "gone")))
    (first,) = old.on_request(request(CLUSTER))
    held = {r.name: r.version for r in decode(first).resources}
    held["b"] = "stale-version"
    new = started(resources(clusters=("a", "b", "c")))
    (answer,) = new.on_request(request(CLUSTER, initial=held))
    assert sent(answer) == (["b", "c"], ["gone"])  # a is held at the right version


def test_named_resources_are_resent_on_reconnect_even_at_the_declared_version():
    old = started()
    (first,) = old.on_request(request(ENDPOINT, ["a"]))
    held = {r.name: r.version for r in decode(first).resources}
    new = started()
    (answer,) = new.on_request(request(ENDPOINT, ["a"], initial=held))
    assert sent(answer) == (["a"], [])


def test_one_response_in_flight_and_the_newest_content_follows_its_ack():
    stream = started(resources(clusters=("a",)))
    (first,) = stream.on_request(request(CLUSTER))
    assert stream.set_resources(resources(clusters=("a", "b")), 2) == []
    assert stream.set_resources(resources(clusters=("a", "b", "c")), 3) == []
    assert stream.types[CLUSTER].status() == STALE
    (newest,) = stream.on_request(ack(first))
    assert sent(newest) == (["b", "c"], [])
    assert stream.types[CLUSTER].sent_generation == 3


def test_listeners_wait_while_new_clusters_warm():
    stream = started(resources(clusters=("a",)))
    out = stream.on_request(request(CLUSTER))
    out += stream.on_request(ack(out[0]))
    (lds,) = stream.on_request(request(LISTENER))
    stream.on_request(ack(lds))
    new = resources(clusters=("a", "b"), listeners=("l", "m"))
    (cds,) = stream.set_resources(new, 2)  # the listener waits for cluster b
    assert cds.type_url == CLUSTER
    assert stream.types[LISTENER].status() == STALE
    (listeners,) = stream.on_request(ack(cds))
    assert listeners.type_url == LISTENER and sent(listeners) == (["m"], [])


def test_removed_clusters_stay_until_the_listeners_moved_off_them():
    stream = started(resources(clusters=("a", "b"), listeners=("l",)))
    (cds,) = stream.on_request(request(CLUSTER))
    stream.on_request(ack(cds))
    (lds,) = stream.on_request(request(LISTENER))
    stream.on_request(ack(lds))
    moved = resources(clusters=("a",), listeners=("l2",))
    out = stream.set_resources(moved, 2)
    assert [r.type_url for r in out] == [LISTENER]  # cluster b kept while listeners change
    assert sent(out[0]) == (["l2"], ["l"])
    (removal,) = stream.on_request(ack(out[0]))
    assert removal.type_url == CLUSTER and sent(removal) == ([], ["b"])


def test_a_changed_cluster_gets_its_assignment_again():
    stream = started(resources(clusters=("a",)))
    (cds,) = stream.on_request(request(CLUSTER))
    stream.on_request(ack(cds))
    (eds,) = stream.on_request(request(ENDPOINT, ["a"]))
    stream.on_request(ack(eds))
    changed = resources(clusters=("a",))
    changed[CLUSTER] = pack_all([cluster_pb2.Cluster(name="a", connect_timeout={"seconds": 3})])
    out = stream.set_resources(changed, 2)
    assert [(r.type_url, sent(r)) for r in out] == [(CLUSTER, (["a"], [])), (ENDPOINT, (["a"], []))]


def test_unknown_types_are_counted_not_answered():
    stream = started()
    assert stream.on_request(request("type.googleapis.com/made.up")) == []
    assert stream.unknown_requests == 1 and not stream.types


def test_listener_removal_on_wildcard_shrink():
    stream = started(resources(listeners=("l", "m")))
    (lds,) = stream.on_request(request(LISTENER))
    stream.on_request(ack(lds))
    shrunk = resources(listeners=("l",))
    (push,) = stream.set_resources(shrunk, 2)
    assert sent(push) == ([], ["m"])  # without it Envoy keeps the listener (checklist 36)
