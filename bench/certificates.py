"""Certificates: how fast the CA signs, and how long K sidecars connecting at once take
until every one holds its certificate, with the server's longest event-loop stall.

First signs N workload certificates in this process (ECDSA P-256, the default, and RSA
2048) and prints certificates per second. Then starts `xds-server serve` on a small mesh
with xDS over TLS only (the plaintext port off), mints a token per simulated sidecar
(`xds-server token`'s key, in the server's state directory), and opens K ADS streams at
once over TLS from this process, each bound by its token to its own service account.
Each asks for clusters and for its SDS secrets `default` and `ROOTCA` and ACKs what it
gets, as Envoy does. Prints the time until all K hold a certificate, refused streams,
and the server's longest event-loop stall (/debug/loopz) meanwhile.

    python bench/certificates.py [--streams 500,2000] [--sign 500] [--channels 50]

The client shares the machine's cores with the server; K streams ride on --channels TLS
connections (Envoys would each have their own: the server's handshakes are then more).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import tempfile
import time
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from served import get_json, serving, stop_streams, write_mesh

from xds_server import tokens
from xds_server.ca import CertificateAuthority
from xds_server.launcher import free_port

_PREFIX = "type.googleapis.com/envoy."
CDS = _PREFIX + "config.cluster.v3.Cluster"
SECRET = _PREFIX + "extensions.transport_sockets.tls.v3.Secret"
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def sign_rate(count: int, key_type: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        ca = CertificateAuthority.load_or_create(Path(tmp))
        started = time.perf_counter()
        for i in range(count):
            ca.issue("default", f"sa-{i}", datetime.timedelta(hours=24), key_type)
        return count / (time.perf_counter() - started)


class Sidecar:
    """One simulated Envoy: CDS, then its secrets; done once a certificate arrived."""

    def __init__(self, channel, node_id: str, namespace: str, sa: str, token: str) -> None:
        self.channel, self.node_id, self.namespace, self.sa = channel, node_id, namespace, sa
        self.token = token
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.done = asyncio.Event()
        self.error = ""

    def _request(self, type_url: str, names=(), version="", nonce="", first=False) -> bytes:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            version_info=version,
            response_nonce=nonce,
        )
        if first:
            metadata = struct_pb2.Struct()
            metadata.update(
                {"NAMESPACE": self.namespace, "LABELS": {"app": "sim"}, "SERVICE_ACCOUNT": self.sa}
            )
            request.node.CopyFrom(base_pb2.Node(id=self.node_id, metadata=metadata))
        return request.SerializeToString()

    async def run(self) -> None:
        call = self.channel.stream_stream(ADS)(
            self._requests(), metadata=(("authorization", f"Bearer {self.token}"),)
        )
        self.outbox.put_nowait(self._request(CDS, first=True))
        self.outbox.put_nowait(self._request(SECRET, ["default", "ROOTCA"]))
        try:
            async for raw in call:
                response = discovery_pb2.DiscoveryResponse.FromString(raw)
                names = ["default", "ROOTCA"] if response.type_url == SECRET else []
                self.outbox.put_nowait(
                    self._request(response.type_url, names, response.version_info, response.nonce)
                )
                if response.type_url == SECRET and response.resources:
                    self.done.set()
        except grpc.aio.AioRpcError as exc:
            self.error = f"{exc.code().name}: {exc.details()}"[:120]
            self.done.set()

    async def _requests(self):
        while True:
            item = await self.outbox.get()
            if item is None:
                return
            yield item


async def _round(k: int, port: int, debug: int, root: bytes, key: bytes, channels: int) -> str:
    loopz = f"http://127.0.0.1:{debug}/debug/loopz"
    get_json(loopz + "?reset=1")
    credentials = grpc.ssl_channel_credentials(root)
    name = [("grpc.ssl_target_name_override", "xds-server")]
    opened = [
        grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=name)
        for _ in range(min(k, channels))
    ]
    sims = []
    for i in range(k):
        namespace, sa = f"ns-{i % 10}", f"sa-{i}"
        token = tokens.issue(key, namespace, sa, 3600)
        sims.append(Sidecar(opened[i % len(opened)], f"sim-{i}", namespace, sa, token))
    started = time.perf_counter()
    tasks = [asyncio.create_task(s.run()) for s in sims]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in sims)), 300)
        elapsed = time.perf_counter() - started
        loop = get_json(loopz)
        refused = [s.error for s in sims if s.error]
        note = f"   e.g. {refused[0]}" if refused else ""
        gc = f"   (longest GC pause {loop['max_gc_pause_ms']:.0f} ms)"
        return f"{k:>7} {elapsed:12.2f} {len(refused):8d} {loop['max_stall_ms']:14.0f}{gc}{note}"
    finally:
        for s in sims:
            s.outbox.put_nowait(None)
        await stop_streams(tasks, opened)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="500,2000")
    parser.add_argument("--sign", type=int, default=500, help="certificates to time signing")
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--channels", type=int, default=50, help="client TLS connections")
    args = parser.parse_args()
    for key_type in ("ecdsa", "rsa"):
        count = args.sign if key_type == "ecdsa" else max(1, args.sign // 10)
        rate = sign_rate(count, key_type)
        print(f"signing {key_type}: {rate:,.0f} certificates/s (key and certificate)", flush=True)
    print(
        f"{'streams':>7} {'all hold s':>12} {'refused':>8} {'stall ms':>14}\n"
        f"{'':>7} {'(at once)':>12} {'':>8} {'(connecting)':>14}",
        flush=True,
    )
    for k in (int(n) for n in args.streams.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            config, state = Path(tmp) / "mesh", Path(tmp) / "state"
            config.mkdir()
            write_mesh(config, args.services)
            key = tokens.load_or_create_key(state)
            port, debug = free_port(), free_port()
            listen = ["--xds-port", "off", "--xds-tls-port", str(port)]
            log = os.environ.get("BENCH_SERVER_LOG", "")
            with serving(config, state, debug, listen, log):
                root = (state / "ca" / "root-cert.pem").read_bytes()
                print(asyncio.run(_round(k, port, debug, root, key, args.channels)), flush=True)


if __name__ == "__main__":
    main()
