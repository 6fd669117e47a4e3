"""Many simulated sidecars against one server: memory, event-loop stalls, convergence.

Starts `xds-server serve` on a generated mesh (N services, each a Service, a two-subset
DestinationRule and a VirtualService, over 10 namespaces), then opens K ADS streams at
once from this process (grpc.aio, one stream per simulated sidecar, distinct node ids
over the 10 namespaces, each asking for CDS, EDS, LDS, RDS and ACKing like Envoy).
Prints, per K: the time until all K have ACKed all four types, stream failures, the
server's RSS, the server's longest event-loop stall (its /debug/loopz) while they
connected; then the time for one endpoint change (one more workload of svc-0 connects)
to reach all K as an EDS update, and the longest stall meanwhile.

The client reads only version, type and nonce of each response (resources stay bytes),
and the cluster names once per CDS version, so that it costs little next to the server.

    python bench/streams.py [--streams 100,500,1000,2000] [--services 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2
from served import get_json, serving, stop_streams, write_mesh

from xds_server.launcher import free_port

_PREFIX = "type.googleapis.com/envoy."
CDS = _PREFIX + "config.cluster.v3.Cluster"
EDS = _PREFIX + "config.endpoint.v3.ClusterLoadAssignment"
LDS = _PREFIX + "config.listener.v3.Listener"
RDS = _PREFIX + "config.route.v3.RouteConfiguration"
SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
METHODS = {
    "sotw": SERVICE + "StreamAggregatedResources",
    "delta": SERVICE + "DeltaAggregatedResources",
}


def _light_response():
    """DiscoveryResponse (or DeltaDiscoveryResponse: the same field numbers) without its
    resources: parsing skips them as unknown bytes."""
    file = descriptor_pb2.FileDescriptorProto(name="bench_light.proto", package="bench")
    message = file.message_type.add(name="LightResponse")
    for name, number in (("version_info", 1), ("type_url", 4), ("nonce", 5)):
        message.field.add(
            name=name,
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.LightResponse"))


LightResponse = _light_response()
_cluster_names: dict[str, list[str]] = {}  # CDS version -> EDS cluster names
CHANNELS = 50  # client connections the simulated sidecars share (--channels)
API = "sotw"  # or "delta" (--api)


def _eds_names(version: str, raw: bytes) -> list[str]:
    if version not in _cluster_names:
        if API == "delta":
            delta = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
            packs = [r.resource for r in delta.resources]
        else:
            packs = list(discovery_pb2.DiscoveryResponse.FromString(raw).resources)
        names = []
        for packed in packs:
            cluster = cluster_pb2.Cluster()
            packed.Unpack(cluster)
            if cluster.type == cluster_pb2.Cluster.EDS:
                names.append(cluster.name)
        _cluster_names[version] = names
    return _cluster_names[version]


class Sidecar:
    """One simulated Envoy: subscribes to the four types and ACKs every response."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str, namespace: str, meta=None):
        self.channel, self.node_id, self.namespace = channel, node_id, namespace
        self.meta = meta or {}
        self.acked: dict[str, str] = {}
        self.eds_at: list[float] = []
        self.failed = 0
        self.errors: list[str] = []
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.done = asyncio.Event()

    def request(self, type_url: str, names=(), version="", nonce="", first=False) -> bytes:
        if API == "delta":
            # An ACK carries only the nonce; a subscription only the new names.
            req = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url,
                resource_names_subscribe=[] if nonce else list(names),
                response_nonce=nonce,
            )
        else:
            req = discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                resource_names=list(names),
                version_info=version,
                response_nonce=nonce,
            )
        if first:
            metadata = struct_pb2.Struct()
            metadata.update({"NAMESPACE": self.namespace, "LABELS": {"app": "sim"}, **self.meta})
            req.node.CopyFrom(base_pb2.Node(id=self.node_id, metadata=metadata))
        return req.SerializeToString()

    async def run(self) -> None:
        call = self.channel.stream_stream(METHODS[API])(self._requests())
        self.outbox.put_nowait(self.request(CDS, first=True))
        eds_names: list[str] = []
        try:
            async for raw in call:
                light = LightResponse.FromString(raw)
                type_url = light.type_url
                if type_url == CDS:
                    if CDS not in self.acked or API == "sotw":
                        eds_names = _eds_names(light.version_info, raw)
                    if CDS not in self.acked:
                        self.outbox.put_nowait(self.request(EDS, eds_names))
                        self.outbox.put_nowait(self.request(LDS))
                elif type_url == LDS and LDS not in self.acked:
                    self.outbox.put_nowait(self.request(RDS, ["http_proxy"]))
                elif type_url == EDS:
                    self.eds_at.append(time.perf_counter())
                names = {EDS: eds_names, RDS: ["http_proxy"]}.get(type_url, [])
                self.outbox.put_nowait(
                    self.request(type_url, names, light.version_info, light.nonce)
                )
                self.acked[type_url] = light.version_info
                if len(self.acked) == 4:
                    self.done.set()
        except grpc.aio.AioRpcError as exc:
            self.failed += 1
            self.errors.append(f"{exc.code().name}: {exc.details()}"[:120])
            self.done.set()

    async def _requests(self):
        while True:
            item = await self.outbox.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        self.outbox.put_nowait(None)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _round(k: int, xds: int, debug: int, server: subprocess.Popen) -> str:
    loopz = f"http://127.0.0.1:{debug}/debug/loopz"
    get_json(loopz + "?reset=1")
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{xds}") for _ in range(min(k, CHANNELS))]
    sims = [Sidecar(channels[i % len(channels)], f"sim-{i}", f"ns-{i % 10}") for i in range(k)]
    started = time.perf_counter()
    tasks = [asyncio.create_task(s.run()) for s in sims]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in sims)), 600)
        converged = time.perf_counter() - started
        loop = get_json(loopz + "?reset=1")
        connect_stall = loop["max_stall_ms"]
        print(
            f"  connecting: {loop['full_collections']} full GCs, longest "
            f"{loop['max_gc_pause_ms']} ms",
            flush=True,
        )
        rss = _rss_mb(server.pid)
        failed = sum(s.failed for s in sims)
        if failed:
            reasons = collections.Counter(e for s in sims for e in s.errors)
            print(f"  stream failures: {dict(reasons.most_common(3))}", flush=True)
        # One endpoint change: a workload of svc-0 connects.
        before = [len(s.eds_at) for s in sims]
        newcomer = Sidecar(
            channels[0],
            "svc-0-new",
            "ns-0",
            {
                "LABELS": {"app": "svc-0", "version": "v1"},
                "WORKLOAD_PORTS": "8080:15006",
                "INSTANCE_IPS": "127.0.55.1",
            },
        )
        changed_at = time.perf_counter()
        extra = asyncio.create_task(newcomer.run())

        async def reached() -> None:
            while any(len(s.eds_at) <= b for s, b in zip(sims, before, strict=True)):
                await asyncio.sleep(0.005)

        try:
            await asyncio.wait_for(reached(), 300)
        except TimeoutError:
            got = sum(len(s.eds_at) > b for s, b in zip(sims, before, strict=True))
            failed = sum(s.failed for s in sims)
            return (
                f"{k:>7} {converged:11.2f} {failed:8d} {rss:8.0f} {connect_stall:13.0f}"
                f"   endpoint change reached only {got} of {k} in 300 s"
            )
        last = max(s.eds_at[b] for s, b in zip(sims, before, strict=True))
        endpoint = last - changed_at
        endpoint_stall = get_json(loopz)["max_stall_ms"]
        newcomer.close()
        extra.cancel()
        return (
            f"{k:>7} {converged:11.2f} {failed:8d} {rss:8.0f} {connect_stall:13.0f}"
            f" {endpoint * 1000:14.0f} {endpoint_stall:15.0f}"
        )
    finally:
        for s in sims:
            s.close()
        await stop_streams(tasks, channels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="100,500,1000,2000")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--server-log", default="", help="append the server's log here")
    parser.add_argument("--channels", type=int, default=50, help="client connections")
    parser.add_argument("--api", choices=("sotw", "delta"), default="sotw", help="xDS variant")
    args = parser.parse_args()
    global CHANNELS, API
    CHANNELS, API = args.channels, args.api
    print(
        f"{'streams':>7} {'converged s':>11} {'failed':>8} {'RSS MB':>8} {'stall ms':>13}"
        f" {'endpoint ms':>14} {'stall ms':>15}\n"
        f"{'':>7} {'(all at once)':>11} {'':>8} {'':>8} {'(connecting)':>13}"
        f" {'(to all K)':>14} {'(endpoint)':>15}",
        flush=True,
    )
    for k in (int(n) for n in args.streams.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "mesh"
            config.mkdir()
            write_mesh(config, args.services)
            xds, debug = free_port(), free_port()
            listen = ["--xds-port", str(xds), "--xds-tls-port", "off"]
            state = Path(tmp) / "state"
            with serving(config, state, debug, listen, args.server_log) as server:
                print(asyncio.run(_round(k, xds, debug, server)), flush=True)


if __name__ == "__main__":
    main()
