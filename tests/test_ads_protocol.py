"""The gRPC ADS servicer driven by a Python ADS client over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from tests.helpers import service_yaml
from translators.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.launcher import free_port
from xds_server.server import ControlPlane, ServerOptions

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


def node(node_id: str = "caller") -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update(
        {
            "NAMESPACE": "default",
            "LABELS": {"app": "caller"},
            "WORKLOAD_PORTS": "9080:15006",
            "INSTANCE_IPS": "127.0.0.9",
        }
    )
    return base_pb2.Node(id=node_id, metadata=metadata)


class Client:
    """One ADS stream: send requests, receive responses with a bounded wait."""

    METHOD = "StreamAggregatedResources"

    def __init__(self, channel: grpc.aio.Channel, node_id: str = "caller") -> None:
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.node = node(node_id)
        self.first = True

        async def requests():
            while True:
                item = await self.outbox.get()
                if item is None:
                    return
                yield item

        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = self._call(stub, requests())
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())

    def _call(self, stub, requests):
        return getattr(stub, self.METHOD)(requests)

    async def _read(self) -> None:
        # Reading in a task of its own: cancelling a pending read() would cancel the call.
        try:
            async for response in self.call:
                self.inbox.put_nowait(response)
        except grpc.aio.AioRpcError as exc:
            self.inbox.put_nowait(exc)

    def send(self, type_url, names=(), nonce="", version="", error=None):
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            response_nonce=nonce,
            version_info=version,
        )
        self.put(req, error)

    def put(self, req, error=None) -> None:
        """Queue a request: the node on the first, error_detail for a NACK."""
        if self.first:
            req.node.CopyFrom(self.node)
            self.first = False
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
        self.outbox.put_nowait(req)

    def ack(self, resp, names=()):
        self.send(resp.type_url, names, nonce=resp.nonce, version=resp.version_info)

    async def recv(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        item = await asyncio.wait_for(self.inbox.get(), timeout)
        if isinstance(item, Exception):
            raise item
        return item

    async def silent(self, seconds: float = 0.5) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            resp = await asyncio.wait_for(self.inbox.get(), seconds)
            raise AssertionError(f"unexpected response {resp}")
        return True

    def close(self) -> None:
        self.outbox.put_nowait(None)
        self.call.cancel()
        self.reader.cancel()


async def sync_all(client: Client) -> dict[str, discovery_pb2.DiscoveryResponse]:
    """Subscribe to every type and ACK the first answers; returns them by type."""
    got = {}
    for type_url, names in (
        (CLUSTER, ()),
        (ENDPOINT, [REVIEWS]),
        (LISTENER, ()),
        (ROUTE, ["http_proxy"]),
    ):
        client.send(type_url, names)
        got[type_url] = await client.recv()
        client.ack(got[type_url], names)
    return got


@pytest.fixture
async def plane(tmp_path: Path):
    config_dir = tmp_path / "mesh"
    config_dir.mkdir()
    (config_dir / "svc.yaml").write_text(service_yaml("reviews", "ratings"))
    control = ControlPlane(
        ServerOptions(
            config_dir, xds_port=free_port(), xds_tls_port=0, debug_port=free_port(), debounce_ms=10
        )
    )
    await control.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{control.xds_port}")
    yield control, channel
    await channel.close()
    await control.stop()


async def test_ack_flow_and_first_requests(plane):
    control, channel = plane
    client = Client(channel)
    client.send(CLUSTER)
    cds = await client.recv()
    assert cds.type_url == CLUSTER and len(cds.resources) == 10  # 2 x (1 + 3), inbound, passthrough
    client.send(ENDPOINT, [REVIEWS])
    eds = await client.recv()
    assert eds.type_url == ENDPOINT and len(eds.resources) == 1
    client.ack(cds)
    client.send(LISTENER)
    lds = await client.recv()
    assert len(lds.resources) == 2  # outbound + one inbound
    client.ack(eds, [REVIEWS])
    client.send(ROUTE, ["http_proxy"])
    rds = await client.recv()
    client.ack(lds)
    client.ack(rds, ["http_proxy"])
    assert await client.silent()
    info = control.servicer.latest_streams()["caller"]
    assert {s.status() for s in info.protocol.status().values()} == {"SYNCED"}
    client.close()


async def test_nack_is_not_resent(plane):
    _, channel = plane
    client = Client(channel)
    client.send(CLUSTER)
    cds = await client.recv()
    client.send(CLUSTER, nonce=cds.nonce, version="", error="Invalid duration")
    assert await client.silent(1.0)
    client.close()


async def test_stale_nonce_is_ignored_and_subscription_changes_served(plane):
    _, channel = plane
    client = Client(channel)
    client.send(ENDPOINT, [REVIEWS])
    first = await client.recv()
    ratings = REVIEWS.replace("reviews", "ratings")
    client.send(ENDPOINT, [REVIEWS, ratings], nonce=first.nonce, version=first.version_info)
    second = await client.recv()
    assert len(second.resources) == 2
    client.send(ENDPOINT, [REVIEWS, ratings], nonce=first.nonce)  # stale
    assert await client.silent()
    client.send(ROUTE, ["http_proxy"])
    assert (await client.recv()).type_url == ROUTE
    client.close()


async def test_config_change_pushes_only_what_changed(plane):
    control, channel = plane
    client = Client(channel)
    await sync_all(client)
    assert await client.silent(0.3)
    (control.options.config_dir / "vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n"
        "spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, "
        "subset: v2}\n"
    )
    pushed = await client.recv(10)
    assert pushed.type_url == ROUTE  # clusters, endpoints and listeners are unchanged
    client.ack(pushed, ["http_proxy"])
    assert await client.silent(0.3)
    client.close()


async def test_reconnect_gets_everything_and_disconnect_frees_state(plane):
    control, channel = plane
    client = Client(channel)
    client.send(CLUSTER)
    cds = await client.recv()
    client.close()
    for _ in range(100):
        if not control.servicer.streams and not control.mesh.connections:
            break
        await asyncio.sleep(0.02)
    assert not control.servicer.streams and not control.mesh.connections
    again = Client(channel)
    again.send(CLUSTER, version=cds.version_info)  # Envoy reconnects with its old version
    resent = await again.recv()
    assert resent.version_info == cds.version_info and len(resent.resources) == 10
    again.close()


async def test_stream_without_node_id_is_refused(plane):
    _, channel = plane
    client = Client(channel, node_id="")
    client.send(CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.recv()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node.id" in info.value.details()


VS_V2 = (
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n"
    "spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, "
    "subset: v2}\n"
)


async def test_a_nack_rolls_back_the_file_and_later_edits_still_arrive(plane):
    control, channel = plane
    client = Client(channel)
    first = await sync_all(client)
    assert await client.silent(0.3)
    (control.options.config_dir / "vs.yaml").write_text(VS_V2)
    pushed = await client.recv(10)
    assert pushed.type_url == ROUTE
    client.send(ROUTE, ["http_proxy"], nonce=pushed.nonce, version="", error="bad\nroute")
    rolled = await client.recv(10)  # the routes Envoy last accepted, pushed again
    assert rolled.type_url == ROUTE and rolled.version_info == first[ROUTE].version_info
    client.ack(rolled, ["http_proxy"])
    issues = [str(i) for i in control.store.all_issues()]
    assert any(
        "vs.yaml:1: error: VirtualService default/r: Envoy rejected" in i and "bad\\nroute" in i
        for i in issues
    ), issues
    (rollback,) = control.rollbacks
    assert rollback["proxy"] == "caller" and rollback["type"] == "RDS"
    assert rollback["rolled_back"] == [str(control.options.config_dir / "vs.yaml")]
    # Another file's edit meanwhile is not held back by the rejected one.
    (control.options.config_dir / "ratings-vs.yaml").write_text(
        VS_V2.replace("name: r}", "name: ra}").replace("reviews", "ratings")
    )
    later = await client.recv(10)
    assert later.type_url == ROUTE and later.version_info not in (
        first[ROUTE].version_info,
        pushed.version_info,
    )
    client.close()


async def test_untrusted_node_metadata_is_refused_and_others_keep_working(plane):
    control, channel = plane
    good = Client(channel)
    await sync_all(good)
    for key, value in (
        ("INSTANCE_IPS", "not-an-ip"),
        ("NAMESPACE", "Bad_NS"),
        ("LABELS", {"app": "x\ny"}),
        ("WORKLOAD_PORTS", "9080:15006,9081:15006"),
    ):
        bad = Client(channel, node_id=f"bad-{key.lower()}")
        bad.node.metadata.update({key: value})
        bad.send(CLUSTER)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await bad.recv()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert key in info.value.details()
        bad.close()
    forged = Client(channel, node_id="evil\nINFO forged line")
    forged.send(CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError):
        await forged.recv()
    forged.close()
    assert set(control.servicer.latest_streams()) == {"caller"}
    assert await good.silent(0.3)
    good.close()


async def test_a_huge_nack_message_is_kept_short_and_escaped(plane):
    control, channel = plane
    client = Client(channel)
    client.send(CLUSTER)
    cds = await client.recv()
    client.send(CLUSTER, nonce=cds.nonce, error="\x1b[31m" + "x" * 1_000_000)
    assert await client.silent(0.5)
    state = control.servicer.latest_streams()["caller"].protocol.types[CLUSTER]
    assert len(state.nack_message) < 3000 and "\x1b" not in state.nack_message
    client.close()


async def test_workloads_remembered_across_a_restart_stay_endpoints_until_grace_ends(
    tmp_path: Path,
):
    config_dir = tmp_path / "mesh"
    config_dir.mkdir()
    (config_dir / "svc.yaml").write_text(service_yaml("reviews"))

    def options() -> ServerOptions:
        return ServerOptions(
            config_dir,
            xds_port=free_port(),
            xds_tls_port=0,
            debug_port=free_port(),
            debounce_ms=10,
            state_dir=tmp_path / "state",
            restart_grace_s=1.0,
        )

    async def endpoints(control: ControlPlane, node_id: str):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{control.xds_port}")
        client = Client(channel, node_id)
        client.send(ENDPOINT, [REVIEWS])
        return client, channel, await client.recv()

    def addresses(response) -> list[str]:
        out = []
        for packed in response.resources:
            assignment = endpoint_pb2.ClusterLoadAssignment()
            packed.Unpack(assignment)
            for locality in assignment.endpoints:
                out += [e.endpoint.address.socket_address.address for e in locality.lb_endpoints]
        return sorted(out)

    first = ControlPlane(options())
    await first.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{first.xds_port}")
    workload = Client(channel, "reviews-v1")
    workload.node.metadata.update({"LABELS": {"app": "reviews", "version": "v1"}})
    workload.node.metadata.update({"INSTANCE_IPS": "127.0.0.20"})
    workload.send(CLUSTER)
    await workload.recv()
    for _ in range(100):  # saved after the push that counted it
        if (tmp_path / "state" / "workloads.json").is_file():
            break
        await asyncio.sleep(0.02)
    workload.close()
    await channel.close()
    await first.stop()

    second = ControlPlane(options())
    await second.start()
    client, channel, response = await endpoints(second, "caller")
    assert addresses(response) == ["127.0.0.20"]  # not withdrawn by the restart
    client.ack(response, [REVIEWS])
    after_grace = await client.recv(10)  # the workload never came back
    assert addresses(after_grace) == []
    client.close()
    await channel.close()
    await second.stop()


async def test_a_nack_of_content_another_proxy_accepted_rolls_nothing_back(plane):
    control, channel = plane
    honest, hostile = Client(channel, "caller"), Client(channel, "caller-2")
    await sync_all(honest)
    await sync_all(hostile)
    (control.options.config_dir / "vs.yaml").write_text(VS_V2)
    accepted = await honest.recv(10)
    honest.ack(accepted, ["http_proxy"])
    refused = await hostile.recv(10)
    assert refused.version_info == accepted.version_info
    hostile.send(ROUTE, ["http_proxy"], nonce=refused.nonce, error="no thanks")
    for _ in range(100):
        if control.rollbacks:
            break
        await asyncio.sleep(0.02)
    (report,) = control.rollbacks
    assert report["accepted_by_others"] == ["caller"] and report["rolled_back"] == []
    assert await honest.silent(0.5)  # the edit stays in force for everyone
    assert not [i for i in control.store.all_issues() if "Envoy rejected" in i.message]
    honest.close()
    hostile.close()


async def test_observers_see_what_happens_on_a_stream(plane):
    control, channel = plane
    seen: list[tuple[str, str]] = []
    control.servicer.observers.append(lambda e: seen.append((e.kind, e.node_id)))
    client = Client(channel)
    client.send(CLUSTER)
    cds = await client.recv()
    client.send(CLUSTER, nonce=cds.nonce, version="", error="refused")
    assert await client.silent(0.3)
    client.close()
    for _ in range(100):
        if ("close", "caller") in seen:
            break
        await asyncio.sleep(0.02)
    kinds = [kind for kind, node in seen if node == "caller"]
    assert kinds[:3] == ["open", "push", "nack"] and kinds[-1] == "close"


async def test_a_workload_joining_pushes_endpoints_only_to_the_proxies_that_see_it(plane):
    control, channel = plane
    (control.options.config_dir / "scope.yaml").write_text(
        "apiVersion: networking.istio.io/v1beta1\nkind: Sidecar\n"
        "metadata: {name: narrow, namespace: default}\n"
        "spec:\n  workloadSelector: {labels: {app: narrow}}\n"
        "  egress: [{hosts: ['./ratings.default.svc.cluster.local']}]\n"
    )
    for _ in range(100):
        if control.store.snapshot.of_kind("Sidecar"):
            break
        await asyncio.sleep(0.02)
    sees, blind = Client(channel, "caller"), Client(channel, "narrow")
    blind.node.metadata.update({"LABELS": {"app": "narrow"}})
    await sync_all(sees)
    for type_url, names in ((CLUSTER, ()), (LISTENER, ()), (ROUTE, ["http_proxy"])):
        blind.send(type_url, names)
        blind.ack(await blind.recv(), names)
    assert await sees.silent(0.3) and await blind.silent(0.1)
    workload = Client(channel, "reviews-v1")
    workload.node.metadata.update(
        {"LABELS": {"app": "reviews", "version": "v1"}, "INSTANCE_IPS": "127.0.0.21"}
    )
    workload.send(CLUSTER)
    await workload.recv()
    pushed = await sees.recv(10)
    assert pushed.type_url == ENDPOINT  # endpoints only: clusters, listeners, routes unchanged
    assert await sees.silent(0.3)
    assert await blind.silent(0.3)  # it does not see reviews: nothing to send
    for client in (sees, blind, workload):
        client.close()
