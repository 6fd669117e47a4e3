"""Wiring: config store + watcher -> mesh state -> ADS gRPC server, plus the debug HTTP port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xds_server.ads.servicer import AdsServicer
from xds_server.config.loader import ConfigStore
from xds_server.config.watcher import log_issues, watch
from xds_server.debug_http import make_app
from xds_server.mesh_state import MeshState

log = logging.getLogger(__name__)


@dataclass
class ServerOptions:
    config_dir: Path
    xds_address: str = "127.0.0.1"
    xds_port: int = 15010
    debug_address: str = "127.0.0.1"
    debug_port: int = 15014
    max_message_mb: int = 64
    debounce_ms: int = 50
    # Where the server remembers connected workloads across restarts; None: <config_dir>/.xds-server
    state_dir: Path | None = None
    # After a start, remembered workloads stay endpoints this long unless they reconnect.
    restart_grace_s: float = 30.0
    # Files larger than this are refused (not read).
    max_file_bytes: int = 8 * 1024 * 1024
    # A file that turns empty or unparsable is given this long to be written in full.
    settle_ms: int = 1000
    # serve refuses a missing config directory unless this is set.
    create_config_dir: bool = False


class ControlPlane:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.store = ConfigStore(options.config_dir)
        self.mesh = MeshState(self.store.load_all())
        log_issues(self.store)
        self.servicer = AdsServicer(self.mesh)
        self.grpc_server: grpc.aio.Server | None = None
        self.http_runner: web.AppRunner | None = None
        self.xds_port = options.xds_port
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        limit = self.options.max_message_mb * 1024 * 1024
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (
                ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        self.xds_port = server.add_insecure_port(
            f"{self.options.xds_address}:{self.options.xds_port}"
        )
        await server.start()
        self.grpc_server = server
        runner = web.AppRunner(make_app(self.mesh, self.servicer, self.store), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.options.debug_address, self.options.debug_port).start()
        self.http_runner = runner
        self._tasks = [
            asyncio.create_task(self.mesh.run(), name="push"),
            asyncio.create_task(
                watch(self.store, self.mesh.set_config, self.options.debounce_ms), name="watch"
            ),
        ]
        log.info(
            "xDS (ADS, gRPC) on %s:%d, debug HTTP on http://%s:%d, config from %s",
            self.options.xds_address,
            self.xds_port,
            self.options.debug_address,
            self.options.debug_port,
            self.options.config_dir,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=1)
        if self.http_runner is not None:
            await self.http_runner.cleanup()


async def serve(options: ServerOptions, stop: asyncio.Event | None = None) -> None:
    plane = ControlPlane(options)
    await plane.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await plane.stop()
