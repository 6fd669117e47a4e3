"""Delta ADS (DeltaAggregatedResources) driven by a Python client over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib

from envoy.service.discovery.v3 import discovery_pb2

from tests.helpers import service_yaml
from tests.test_ads_protocol import REVIEWS, VS_V2, Client, plane  # noqa: F401 (fixture)
from tests.test_delta_state import request
from translators.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

RATINGS = REVIEWS.replace("reviews", "ratings")


class DeltaClient(Client):
    """One delta ADS stream with bounded waits."""

    METHOD = "DeltaAggregatedResources"

    def send(self, type_url, subscribe=(), unsubscribe=(), nonce="", initial=None, error=None):
        self.put(request(type_url, subscribe, unsubscribe, nonce, initial), error)

    def ack(self, response) -> None:
        self.send(response.type_url, nonce=response.nonce)


def names(response) -> list[str]:
    return [r.name for r in response.resources]


async def sync_all(client: DeltaClient) -> dict[str, discovery_pb2.DeltaDiscoveryResponse]:
    got = {}
    for type_url, subscribe in (
        (CLUSTER, ()),
        (ENDPOINT, [REVIEWS]),
        (LISTENER, ()),
        (ROUTE, ["http_proxy"]),
    ):
        client.send(type_url, subscribe)
        got[type_url] = await client.recv()
        client.ack(got[type_url])
    return got


async def test_wildcard_and_named_subscriptions(plane):  # noqa: F811
    control, channel = plane
    client = DeltaClient(channel)
    got = await sync_all(client)
    assert len(got[CLUSTER].resources) == 10 and not got[CLUSTER].removed_resources
    assert names(got[ENDPOINT]) == [REVIEWS] and names(got[ROUTE]) == ["http_proxy"]
    assert all(r.version for r in got[CLUSTER].resources)
    assert await client.silent(0.3)
    client.send(ENDPOINT, [RATINGS, "outbound|1||nowhere"])
    more = await client.recv()
    assert names(more) == [RATINGS]  # only the new name, not reviews again
    assert list(more.removed_resources) == ["outbound|1||nowhere"]  # no waiting for it
    client.ack(more)
    client.send(ENDPOINT, unsubscribe=[RATINGS])
    assert await client.silent(0.3)
    info = control.servicer.latest_streams()["caller"]
    assert info.protocol.api == "delta"
    assert {s.status() for s in info.protocol.status().values()} == {"SYNCED"}
    client.close()


async def test_an_edit_sends_one_route_configuration_and_a_removal_sends_its_name(plane):  # noqa: F811
    control, channel = plane
    client = DeltaClient(channel)
    await sync_all(client)
    assert await client.silent(0.3)
    (control.options.config_dir / "vs.yaml").write_text(VS_V2)
    pushed = await client.recv(10)
    assert pushed.type_url == ROUTE and names(pushed) == ["http_proxy"]
    client.ack(pushed)
    assert await client.silent(0.3)
    (control.options.config_dir / "svc.yaml").write_text(service_yaml("reviews"))
    seen: dict[str, discovery_pb2.DeltaDiscoveryResponse] = {}
    for _ in range(6):
        with contextlib.suppress(asyncio.TimeoutError):
            response = await client.recv(2)
            seen[response.type_url] = response
            client.ack(response)
            continue
        break
    removed = {n for r in seen.values() for n in r.removed_resources}
    assert any("ratings" in n for n in removed), seen
    client.close()


async def test_a_nack_is_not_resent_and_rolls_the_file_back(plane):  # noqa: F811
    control, channel = plane
    client = DeltaClient(channel)
    first = await sync_all(client)
    assert await client.silent(0.3)
    (control.options.config_dir / "vs.yaml").write_text(VS_V2)
    pushed = await client.recv(10)
    client.send(ROUTE, nonce=pushed.nonce, error="bad route")
    rolled = await client.recv(10)  # what Envoy accepted, as the routes' new state
    assert rolled.type_url == ROUTE
    assert rolled.resources[0].version == first[ROUTE].resources[0].version
    client.ack(rolled)
    assert await client.silent(0.5)
    assert control.rollbacks and control.rollbacks[0]["type"] == "RDS"
    client.close()


async def test_reconnect_with_initial_versions_resends_nothing_unchanged(plane):  # noqa: F811
    control, channel = plane
    client = DeltaClient(channel)
    got = await sync_all(client)
    client.close()
    held = {r.name: r.version for r in got[CLUSTER].resources}
    held["outbound|9080||deleted.default.svc.cluster.local"] = "0123456789abcdef"
    again = DeltaClient(channel)
    again.send(CLUSTER, initial=held)
    answer = await again.recv()
    assert names(answer) == []  # every cluster is held at the right version
    assert list(answer.removed_resources) == ["outbound|9080||deleted.default.svc.cluster.local"]
    again.ack(answer)
    versions = {r.name: r.version for r in got[ENDPOINT].resources}
    again.send(ENDPOINT, [REVIEWS], initial=versions)
    assert names(await again.recv()) == [REVIEWS]  # named: sent again to be safe
    again.close()
