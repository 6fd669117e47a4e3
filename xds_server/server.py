"""Wiring: config store + watcher -> mesh state -> ADS gRPC server, plus the debug HTTP port."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from translators import model
from translators.resources import SHORT_NAMES
from xds_server import heap, tokens
from xds_server.ads.servicer import AdsServicer, Nack, add_to_server
from xds_server.ca import CertificateAuthority, describe
from xds_server.config.memory import ConfigMemory
from xds_server.config.store import ConfigStore
from xds_server.config.watcher import ConfigWatcher
from xds_server.control_metrics import ControlPlaneMetrics
from xds_server.debug_http import make_app
from xds_server.identity import IdentityService
from xds_server.jwks import JwksSource
from xds_server.loop_monitor import LoopMonitor
from xds_server.mesh_state import MeshState
from xds_server.workload_memory import WorkloadMemory
from xds_server.xds_tls import ServerCertificate, server_addresses, server_names

log = logging.getLogger(__name__)
PENDING_STREAMS = 20_000
STATE_DIR_NAME = ".xds-server"  # under the config dir by default; hidden, so never config
ADMIN_IDENTITY = ("istio-system", "xds-admin")  # whose token opens the debug API


@dataclass
class ServerOptions:
    config_dir: Path
    xds_address: str = "127.0.0.1"
    # Plaintext xDS; None: off (sidecars then need the TLS port).
    xds_port: int | None = 15010
    # xDS over TLS with a certificate from the mesh CA (Istio's 15012); None: off, 0: any.
    xds_tls_port: int | None = 15012
    # More DNS names or IP addresses for the TLS port's certificate (xds_tls.DEFAULT_NAMES).
    xds_tls_names: tuple[str, ...] = ()
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
    # Streams without a token (xds-server token) are refused, not only kept from secrets.
    require_tokens: bool = False
    # Workload certificates live this long and are renewed at half of it.
    cert_lifetime_s: float = 24 * 3600
    # Workload keys: "ecdsa" (P-256, as Istio) or "rsa" (2048 bits).
    workload_key: str = "ecdsa"
    # Istio's cacerts layout (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem);
    # None: the server's own root in <state dir>/ca, made on first start.
    cacerts: Path | None = None
    # The debug API wants an admin token even on loopback (always off loopback).
    debug_require_token: bool = False
    # RequestAuthentication keys (jwksUri) are fetched again this often.
    jwks_refresh_s: float = 20 * 60
    # The first push waits this long for the keys named in the configuration.
    jwks_first_wait_s: float = 5.0


class ControlPlane:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        state_dir = options.state_dir or options.config_dir / STATE_DIR_NAME
        self.store = ConfigStore(
            options.config_dir,
            max_file_bytes=options.max_file_bytes,
            settle_seconds=options.settle_ms / 1000,
            memory=ConfigMemory(state_dir),
        )
        self.mesh = MeshState(
            model.MeshConfig(),
            memory=WorkloadMemory(state_dir),
            restart_grace=options.restart_grace_s,
            ready=False,
        )
        self.jwks = JwksSource(self.mesh.set_jwks, refresh=options.jwks_refresh_s)
        self.watcher = ConfigWatcher(self.store, self._on_config, options.debounce_ms)
        self.identity = IdentityService(
            CertificateAuthority.load_or_create(state_dir / "ca", options.cacerts),
            tokens.load_or_create_key(state_dir),
            require_tokens=options.require_tokens,
            lifetime=datetime.timedelta(seconds=options.cert_lifetime_s),
            key_type=options.workload_key,
            trust_domain=lambda: self.mesh.config.mesh.trust_domain,
        )
        self.servicer = AdsServicer(self.mesh, on_nack=self.on_nack, identity=self.identity)
        self.metrics = ControlPlaneMetrics(
            self.servicer, self.mesh.generation_started, lambda: self.store.all_issues()
        )
        self.mesh.on_push = self.metrics.observe_push
        self.rollbacks: deque[dict] = deque(maxlen=50)
        self.nack_grace = 0.3  # seconds to hear other proxies' answers to a rejected push
        self.loop_monitor = LoopMonitor()
        self.grpc_server: grpc.aio.Server | None = None
        self.http_runner: web.AppRunner | None = None
        self.xds_port = options.xds_port
        self.xds_tls_port = options.xds_tls_port
        self.server_certificate: ServerCertificate | None = None
        self._health: health.aio.HealthServicer | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Serve at once (health answers; xDS streams wait), then load the config in a
        worker thread and let pushes begin."""
        if self.options.create_config_dir:
            self.options.config_dir.mkdir(parents=True, exist_ok=True)
        self.mesh.remember()
        limit = self.options.max_message_mb * 1024 * 1024
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                # Streams gRPC has accepted but the event loop has not taken yet: by default
                # over 1000 of them (a mesh reconnecting at once) are refused.
                ("grpc.server.max_pending_requests", PENDING_STREAMS),
                ("grpc.server.max_pending_requests_hard_limit", 2 * PENDING_STREAMS),
                # A second server on our port must fail to bind, not share its streams.
                ("grpc.so_reuseport", 0),
            ]
        )
        add_to_server(self.servicer, server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        await self._health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            (
                ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        if self.options.xds_port is not None:
            self.xds_port = server.add_insecure_port(
                f"{self.options.xds_address}:{self.options.xds_port}"
            )
        if self.options.xds_tls_port is not None:
            self.server_certificate = ServerCertificate(
                self.identity.ca,
                server_names(self.options.xds_tls_names),
                server_addresses(self.options.xds_address, self.options.xds_tls_names),
                datetime.timedelta(seconds=self.options.cert_lifetime_s),
            )
            self.xds_tls_port = server.add_secure_port(
                f"{self.options.xds_address}:{self.options.xds_tls_port}",
                self.server_certificate.credentials(),
            )
        await server.start()
        self.grpc_server = server
        app = make_app(
            self.mesh,
            self.servicer,
            self.store,
            self.status_extra,
            self.loop_monitor.report,
            admin=self._admin_check() if self._debug_needs_token() else None,
            metrics=self.metrics.exposition,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.options.debug_address, self.options.debug_port).start()
        self.http_runner = runner
        self._tasks = [
            asyncio.create_task(self.mesh.run(), name="push"),
            asyncio.create_task(self.loop_monitor.run(), name="loop monitor"),
        ]
        log.info(
            "xDS (ADS, gRPC) on %s plaintext %s, TLS %s; debug HTTP on http://%s:%d; "
            "config from %s",
            self.options.xds_address,
            self.xds_port if self.options.xds_port is not None else "off",
            self.xds_tls_port if self.options.xds_tls_port is not None else "off",
            self.options.debug_address,
            self.options.debug_port,
            self.options.config_dir,
        )
        snapshot = await self.watcher.load()
        heap.settle()  # the loaded configuration stays: out of the collector's sight
        self.jwks.track(snapshot)
        await self.jwks.first_tries(self.options.jwks_first_wait_s)
        self.mesh.start(snapshot)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self.watcher.run(), name="watch"))
        log.info(
            "config loaded: version %s, %d resources", snapshot.version, len(snapshot.resources)
        )

    def _on_config(self, config: model.MeshConfig) -> None:
        self.mesh.set_config(config)
        self.jwks.track(config)

    def _debug_needs_token(self) -> bool:
        """Off loopback the debug API (every proxy's config) wants an admin token."""
        if self.options.debug_require_token:
            return True
        try:
            return not ipaddress.ip_address(self.options.debug_address).is_loopback
        except ValueError:
            return self.options.debug_address != "localhost"

    def _admin_check(self) -> Callable[[str], bool]:
        key = self.identity.token_key

        def admin(token: str) -> bool:
            try:
                granted = tokens.verify(key, token)
            except tokens.TokenError:
                return False
            return (granted.namespace, granted.service_account) == ADMIN_IDENTITY

        return admin

    def on_nack(self, nack: Nack) -> None:
        """Envoy refused a push: roll back the files that changed since what it accepted."""
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._roll_back(nack), name="rollback"))

    async def _roll_back(self, nack: Nack) -> None:
        rejected = self.mesh.config_version_at(nack.rejected_generation)
        accepted = self.mesh.config_version_at(nack.accepted_generation)
        files: list[str] = []
        # Content that other proxies accepted is not the config's fault but this proxy's
        # (a port it cannot bind, a broken or hostile client): nothing is rolled back for
        # everyone. Wait a moment for the others' answers to the same push.
        await asyncio.sleep(self.nack_grace)
        others = self.servicer.accepted_elsewhere(
            nack.node_id, nack.type_url, nack.rejected_version
        )
        if others:
            log.error(
                "%s rejected %s that %d other proxies accepted (%s); not rolled back: %s",
                nack.node_id,
                SHORT_NAMES.get(nack.type_url, nack.type_url),
                len(others),
                ", ".join(others[:5]),
                nack.message,
            )
        elif rejected and accepted and rejected != accepted:
            files = await self.watcher.rollback(accepted, rejected, nack.message)
        self.rollbacks.append(
            {
                "time": time.time(),
                "proxy": nack.node_id,
                "type": SHORT_NAMES.get(nack.type_url, nack.type_url),
                "message": nack.message,
                "rolled_back": files,
                "accepted_by_others": others,
            }
        )
        if not files and not others:
            log.error(
                "%s rejected %s; no file changed since what it last accepted could be "
                "rolled back (the cause is not a config edit, or it was edited again): %s",
                nack.node_id,
                SHORT_NAMES.get(nack.type_url, nack.type_url),
                nack.message,
            )

    def status_extra(self) -> dict:
        return {
            "ready": self.mesh.ready,
            "rollbacks": list(self.rollbacks),
            "watcher_restarts": self.watcher.restarts,
            "watcher_error": self.watcher.last_error,
            "remembered_workloads": sorted(self.mesh.remembered),
            "jwks": self.jwks.report(),
            "xds": {
                "address": self.options.xds_address,
                "plaintext_port": self.xds_port if self.options.xds_port is not None else None,
                "tls_port": self.xds_tls_port if self.options.xds_tls_port is not None else None,
                "tls_certificate": describe(self.server_certificate.current.chain_pem)[0]
                if self.server_certificate is not None
                else None,
            },
        }

    async def stop(self) -> None:
        self.watcher.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.jwks.close()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=1)
        if self.http_runner is not None:
            await self.http_runner.cleanup()


async def serve(options: ServerOptions, stop: asyncio.Event | None = None) -> None:
    plane = ControlPlane(options)
    try:
        await plane.start()
        await (stop or asyncio.Event()).wait()
    finally:
        await plane.stop()
