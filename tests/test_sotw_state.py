"""The SotW stream state machine, without a network."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from translators.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, pack_all
from xds_server.ads.sotw import ERROR, NOT_SENT, STALE, SYNCED, SotwStream


def resources(clusters=("a",), route_target="a", listeners=("l",)):
    return {
        CLUSTER: pack_all(cluster_pb2.Cluster(name=c) for c in clusters),
        ENDPOINT: pack_all(endpoint_pb2.ClusterLoadAssignment(cluster_name=c) for c in clusters),
        LISTENER: pack_all(listener_pb2.Listener(name=n) for n in listeners),
        ROUTE: pack_all(
            [
                route_pb2.RouteConfiguration(
                    name="r", virtual_hosts=[{"name": route_target, "domains": [route_target]}]
                )
            ]
        ),
    }


def request(type_url, names=(), nonce="", version="", error=None):
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return req


def ack(response, names=()):
    return request(response.type_url, names, nonce=response.nonce, version=response.version_info)


def started(res=None) -> SotwStream:
    stream = SotwStream("node")
    stream.set_resources(res or resources(), 1)
    return stream


def names_in(response) -> list[str]:
    out = []
    for any_msg in response.resources:
        msg = {
            CLUSTER: cluster_pb2.Cluster,
            ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
            LISTENER: listener_pb2.Listener,
            ROUTE: route_pb2.RouteConfiguration,
        }[response.type_url]()
        any_msg.Unpack(msg)
        out.append(getattr(msg, "cluster_name", "") or msg.name)
    return out


def test_first_request_is_answered_and_ack_is_silent():
    stream = started()
    (resp,) = stream.on_request(request(CLUSTER))
    assert resp.type_url == CLUSTER and names_in(resp) == ["a"] and resp.nonce
    assert stream.types[CLUSTER].status() == STALE
    assert stream.on_request(ack(resp)) == []
    assert stream.types[CLUSTER].status() == SYNCED
    assert stream.types[CLUSTER].acked_version == resp.version_info


def test_first_request_is_answered_even_when_empty():
    stream = started({CLUSTER: {}, ENDPOINT: {}, LISTENER: {}, ROUTE: {}})
    (resp,) = stream.on_request(request(LISTENER))
    assert list(resp.resources) == [] and resp.version_info


def test_nack_is_recorded_and_not_resent_until_content_changes():
    stream = started()
    (resp,) = stream.on_request(request(CLUSTER))
    nack = request(CLUSTER, nonce=resp.nonce, error="Invalid duration")
    assert stream.on_request(nack) == []
    state = stream.types[CLUSTER]
    assert state.status() == ERROR and state.nack_message == "Invalid duration"
    assert stream.set_resources(resources(), 2) == []  # same content: no loop
    pushed = stream.set_resources(resources(clusters=("b",)), 3)
    assert [r.type_url for r in pushed] == [CLUSTER]
    stream.on_request(ack(pushed[0]))
    assert state.status() == SYNCED and state.nacked_version is None


def test_stale_nonce_is_not_answered_but_its_names_are_kept():
    stream = started(resources(clusters=("a", "b")))
    (first,) = stream.on_request(request(ENDPOINT, ["a"]))
    (second,) = stream.on_request(request(ENDPOINT, ["a", "b"], nonce=first.nonce))
    assert names_in(second) == ["a", "b"]
    stale = request(ENDPOINT, ["a"], nonce=first.nonce)  # answers an older response
    assert stream.on_request(stale) == []
    assert stream.types[ENDPOINT].names == frozenset({"a"})
    # The ACK of the latest response carries the newest names; they are served then.
    (third,) = stream.on_request(request(ENDPOINT, ["a"], nonce=second.nonce))
    assert names_in(third) == ["a"]


def test_repeated_request_after_ack_is_answered_again():
    stream = started()
    (resp,) = stream.on_request(request(ENDPOINT, ["a"]))
    assert stream.on_request(ack(resp, ["a"])) == []
    (again,) = stream.on_request(request(ENDPOINT, ["a"], nonce=resp.nonce))
    assert names_in(again) == ["a"]
    # The same bytes again (responses are shared by content, nonce included): an ACK of
    # either nonce acknowledges the same content.
    assert again.wire() == resp.wire() and stream.types[ENDPOINT].pending
    assert stream.on_request(ack(again, ["a"])) == []
    assert stream.types[ENDPOINT].status() == SYNCED


def test_subscription_change_in_ack_is_served():
    stream = started(resources(clusters=("a", "b")))
    (resp,) = stream.on_request(request(ENDPOINT, ["a"]))
    (more,) = stream.on_request(request(ENDPOINT, ["a", "b"], nonce=resp.nonce))
    assert sorted(names_in(more)) == ["a", "b"]


def subscribe_all(stream: SotwStream):
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("a",)), (LISTENER, ()), (ROUTE, ("r",))):
        for resp in stream.on_request(request(type_url, names)):
            stream.on_request(request(type_url, names, nonce=resp.nonce, version=resp.version_info))


def test_pushes_go_out_in_make_before_break_order():
    stream = started()
    subscribe_all(stream)
    pushed = stream.set_resources(
        resources(clusters=("a", "b"), route_target="b", listeners=("l", "m")), 2
    )
    # Listeners and routes wait until Envoy ACKs the new cluster, which it does once the
    # cluster has warmed (received its endpoints): a route to it then never answers 503.
    assert [r.type_url for r in pushed] == [CLUSTER, ENDPOINT]
    assert stream.types[ROUTE].status() == STALE
    after = stream.on_request(ack(pushed[0]))
    assert [r.type_url for r in after] == [LISTENER, ROUTE]


def test_routes_still_follow_when_envoy_refuses_the_new_clusters():
    stream = started()
    subscribe_all(stream)
    cds, _ = stream.set_resources(resources(clusters=("a", "b"), route_target="b"), 2)
    nack = request(CLUSTER, nonce=cds.nonce, version="", error="bad cluster")
    assert [r.type_url for r in stream.on_request(nack)] == [ROUTE]


def test_changed_clusters_without_new_ones_do_not_hold_routes():
    stream = started(resources(clusters=("a", "b")))
    subscribe_all(stream)
    changed = resources(clusters=("a", "b"), route_target="b")
    changed[CLUSTER] = pack_all(
        cluster_pb2.Cluster(name=c, connect_timeout={"seconds": 3}) for c in ("a", "b")
    )
    pushed = stream.set_resources(changed, 2)
    assert [r.type_url for r in pushed] == [CLUSTER, ENDPOINT, ROUTE]


def test_cluster_removal_waits_until_routes_moved_and_acked():
    stream = started(resources(clusters=("a", "b")))
    subscribe_all(stream)
    pushed = stream.set_resources(resources(clusters=("b",), route_target="b"), 2)
    assert [r.type_url for r in pushed] == [ENDPOINT, ROUTE]
    assert stream.types[CLUSTER].sent.keys() == {"a", "b"}  # the old cluster stays for now
    assert stream.on_request(ack(pushed[0], ["a"])) == []  # EDS ACK: RDS still in flight
    (final,) = stream.on_request(
        request(ROUTE, ["r"], nonce=pushed[1].nonce, version=pushed[1].version_info)
    )
    assert final.type_url == CLUSTER and names_in(final) == ["b"]


def test_changed_cluster_is_followed_by_its_assignment():
    stream = started()
    subscribe_all(stream)
    changed = resources()
    changed[CLUSTER] = pack_all([cluster_pb2.Cluster(name="a", connect_timeout={"seconds": 3})])
    pushed = stream.set_resources(changed, 2)
    assert [r.type_url for r in pushed] == [CLUSTER, ENDPOINT]  # EDS unchanged, still resent


def test_unknown_type_is_counted_not_answered_nor_kept():
    stream = started()
    url = "type.googleapis.com/envoy.config.route.v3.VirtualHost"
    assert stream.on_request(request(url, ["x"])) == []
    assert stream.on_request(request("t" * 100_000, ["x"] * 1000)) == []
    assert url not in stream.types and stream.unknown_requests == 2


def test_not_sent_until_requested():
    stream = started()
    stream.on_request(request(CLUSTER))
    assert stream.status()[CLUSTER].status() == STALE
    assert ENDPOINT not in stream.status()
    assert NOT_SENT == "NOT SENT"


def test_wildcard_transitions():
    stream = started(resources(clusters=("a", "b")))
    (resp,) = stream.on_request(request(CLUSTER))  # legacy wildcard: empty names
    assert sorted(names_in(resp)) == ["a", "b"]
    (resp,) = stream.on_request(request(CLUSTER, ["a"], nonce=resp.nonce))
    assert names_in(resp) == ["a"]
    # After explicit names, empty means nothing: no answer (nothing is watched, so the
    # client would never ACK one).
    assert stream.on_request(request(CLUSTER, [], nonce=resp.nonce)) == []
    (resp,) = stream.on_request(request(CLUSTER, ["*"], nonce=resp.nonce))
    assert sorted(names_in(resp)) == ["a", "b"]


def test_unsubscribing_from_every_name_is_not_answered():
    """A gateway that loses its last listener re-sends its last route nonce with no names;
    it watches nothing, would never ACK an answer, and must stay SYNCED."""
    stream = started()
    (resp,) = stream.on_request(request(ROUTE, ["r"]))
    assert stream.on_request(ack(resp, ["r"])) == []
    assert stream.on_request(ack(resp, [])) == []
    assert stream.types[ROUTE].status() == SYNCED
    assert stream.set_resources(resources(route_target="b"), 2) == []  # nothing watched
    (again,) = stream.on_request(ack(resp, ["r"]))  # subscribes again: served
    assert names_in(again) == ["r"]
    # Unsubscribing with a stale nonce while an answer is in flight: nothing is owed.
    stream.on_request(ack(resp, []))
    assert stream.types[ROUTE].status() == SYNCED


def test_a_push_sends_only_the_endpoints_that_changed_unless_the_last_was_refused():
    stream = started(resources(clusters=("a", "b")))
    subscribe_all(stream)
    stream.on_request(request(ENDPOINT, ["a", "b"], nonce=stream.types[ENDPOINT].sent_nonce))
    changed = resources(clusters=("a", "b"))
    changed[ENDPOINT] = pack_all(
        [
            endpoint_pb2.ClusterLoadAssignment(cluster_name="a"),
            endpoint_pb2.ClusterLoadAssignment(
                cluster_name="b", policy={"overprovisioning_factor": {"value": 150}}
            ),
        ]
    )
    (eds,) = stream.set_resources(changed, 2)
    assert names_in(eds) == ["b"]  # Envoy keeps "a": EDS responses are incremental
    assert stream.types[ENDPOINT].sent.keys() == {"a", "b"}
    stream.on_request(request(ENDPOINT, ["a", "b"], nonce=eds.nonce, error="refused"))
    again = resources(clusters=("a", "b"))  # back to the first content: sent whole
    (full,) = stream.set_resources(again, 3)
    assert sorted(names_in(full)) == ["a", "b"]
