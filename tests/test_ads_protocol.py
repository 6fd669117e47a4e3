"""The gRPC ADS servicer driven by a Python ADS client over 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
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

        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            requests()
        )
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())

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


@pytest.fixture
async def plane(tmp_path: Path):
    config_dir = tmp_path / "mesh"
    config_dir.mkdir()
    (config_dir / "svc.yaml").write_text(service_yaml("reviews", "ratings"))
    control = ControlPlane(
        ServerOptions(config_dir, xds_port=free_port(), debug_port=free_port(), debounce_ms=10)
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
    for type_url, names in (
        (CLUSTER, ()),
        (ENDPOINT, [REVIEWS]),
        (LISTENER, ()),
        (ROUTE, ["http_proxy"]),
    ):
        client.send(type_url, names)
        resp = await client.recv()
        client.ack(resp, names)
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
