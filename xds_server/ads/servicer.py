"""The gRPC ADS servicer: moves messages between the network and the protocol state machine.

Per stream, one reader task turns requests into events on a queue, and the handler is the
only writer: requests and new resources are processed strictly in arrival order, so the
responses' order is exactly the order the state machine chose (checklist item 32).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from translators.resources import SHORT_NAMES
from xds_server.ads.delta import DeltaStream
from xds_server.ads.pacing import Pacer
from xds_server.ads.sotw import SotwStream
from xds_server.ads.source import ResourceSource
from xds_server.identity import IdentityService, StreamRefused
from xds_server.newest import newest_per_node
from xds_server.node import ADMIN_ADDRESS, NodeError, proxy_from_node
from xds_server.text import safe_text
from xds_server.tokens import Identity

log = logging.getLogger(__name__)


ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit("/", 1)[-1])


@dataclass
class StreamInfo:
    node_id: str
    peer: str
    protocol: SotwStream
    connected_at: float = field(default_factory=time.time)
    namespace: str = ""
    cluster: str = ""  # the node's cluster (its service cluster)
    envoy_version: str = ""  # from the node's build version
    admin: str = ""  # the Envoy's admin address, when its bootstrap says (ADMIN_ADDRESS)


@dataclass(frozen=True)
class StreamEvent:
    """What happened on a stream, for observers (status, metrics, authentication):
    open, close, request (and ACK), nack, push."""

    kind: str
    node_id: str
    peer: str = ""
    type_url: str = ""
    version: str = ""
    nonce: str = ""
    detail: str = ""
    generation: int = -1  # push: the generation the response carries
    size: int = 0  # push: bytes written
    seconds: float = 0.0  # push: time the write took


@dataclass(frozen=True)
class Nack:
    """Envoy refused a response: which proxy, type, message, and the generations of the
    refused content and of what this proxy (or, failing that, any proxy) last accepted."""

    node_id: str
    type_url: str
    message: str
    rejected_generation: int
    accepted_generation: int
    rejected_version: str = ""


def add_to_server(servicer: AdsServicer, server: grpc.aio.Server) -> None:
    """Register ADS with responses written as the bytes the streams already made (see
    xds_server.ads.responses), not serialized again per stream."""
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=bytes,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=bytes,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(
        self,
        source: ResourceSource,
        control_plane_id: str = "xds-server",
        on_nack: Callable[[Nack], None] | None = None,
        identity: IdentityService | None = None,
    ) -> None:
        self.source = source  # where proxies register and get their resources
        self.identity = identity  # tokens and secrets; None: no SDS at all
        self.control_plane_id = control_plane_id
        self.on_nack = on_nack
        self.observers: list[Callable[[StreamEvent], None]] = []
        self.pacer = Pacer()
        self.streams: dict[int, StreamInfo] = {}
        self._stream_ids = 0

    def _emit(self, event: StreamEvent) -> None:
        for observer in self.observers:
            try:
                observer(event)
            except Exception:  # an observer must not break the stream
                log.exception("stream observer failed on %s", event.kind)

    async def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802
        await self._serve(request_iterator, context, SotwStream)

    async def DeltaAggregatedResources(self, request_iterator, context):  # noqa: N802
        await self._serve(request_iterator, context, DeltaStream)

    async def _serve(self, request_iterator, context, protocol_type: type[SotwStream]) -> None:
        """One ADS stream, SotW or delta: the protocol machine decides, this moves bytes."""
        events: asyncio.Queue = asyncio.Queue()
        # The newest resources not yet handed to the protocol: a slow stream skips the
        # generations it had no time for, and never queues more than one.
        latest: list[tuple | None] = [None]

        def deliver(resources, generation: int) -> None:
            queued = latest[0] is not None
            latest[0] = (resources, generation)
            if not queued:
                events.put_nowait(("resources", None))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    events.put_nowait(("request", request))
            except (asyncio.CancelledError, grpc.RpcError):
                pass
            finally:
                events.put_nowait(("end", None))

        reader = asyncio.create_task(read())
        handle: int | None = None
        stream_id: int | None = None
        protocol: SotwStream | None = None
        waiting: list[discovery_pb2.DiscoveryRequest] = []
        peer = context.peer() or ""
        bound: Identity | None = None  # the stream's identity, from its token
        secrets_task: asyncio.Task | None = None
        try:
            while True:
                kind, item = await events.get()
                if kind == "end":
                    return
                await self.pacer.admit()
                if kind == "request":
                    self._log_request(protocol.node_id if protocol else item.node.id, item)
                    if protocol is None:
                        try:
                            proxy = proxy_from_node(item.node, peer)
                        except NodeError as exc:
                            log.warning("refusing ADS stream from %s: %s", safe_text(peer), exc)
                            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                            return
                        if self.identity is not None:
                            try:
                                bound = self.identity.authorize(
                                    context.invocation_metadata(), proxy
                                )
                            except StreamRefused as exc:
                                log.warning("refusing ADS stream from %s: %s", safe_text(peer), exc)
                                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
                                return
                            if bound is not None and _over_tls(context):
                                # It will hold its certificate: mutual TLS.
                                proxy = dataclasses.replace(proxy, mtls=True)
                            elif bound is not None:
                                # Keys travel only over TLS (the TLS port): a token sent in
                                # plaintext binds the stream, but gets it no secret.
                                log.info(
                                    "%s: stream over plaintext; no secrets (use the TLS port)",
                                    safe_text(proxy.node_id, 256),
                                )
                        protocol = protocol_type(proxy.node_id, self.control_plane_id)
                        self._stream_ids += 1
                        stream_id = self._stream_ids
                        self.streams[stream_id] = StreamInfo(
                            proxy.node_id,
                            peer,
                            protocol,
                            namespace=proxy.namespace,
                            **node_facts(item.node),
                        )
                        handle = self.source.connect(proxy, deliver)
                        if bound is not None and proxy.mtls:
                            secrets_task = asyncio.create_task(
                                self.identity.keep_secrets(
                                    proxy.node_id,
                                    bound,
                                    functools.partial(self.source.set_secrets, handle),
                                )
                            )
                        log.info(
                            "proxy %s connected from %s (%s)", proxy.node_id, peer, protocol.api
                        )
                        self._emit(StreamEvent("open", proxy.node_id, peer))
                    if protocol.generation < 0:
                        waiting.append(item)  # answer once this proxy's resources exist
                        continue
                    nacks = self._nacks(protocol, item.type_url)
                    responses = protocol.on_request(item)
                    if self._nacks(protocol, item.type_url) > nacks:
                        self._report_nack(protocol, item.type_url)
                    elif self.observers:
                        self._emit(
                            StreamEvent(
                                "request",
                                protocol.node_id,
                                peer,
                                item.type_url,
                                getattr(item, "version_info", ""),
                                item.response_nonce,
                            )
                        )
                else:
                    update, latest[0] = latest[0], None
                    responses = protocol.set_resources(*update)
                    for request in waiting:
                        responses += protocol.on_request(request)
                    waiting.clear()
                for response in responses:
                    log.debug(
                        "-> %s %s v=%s nonce=%s (%d resources)",
                        protocol.node_id,
                        _short(response.type_url),
                        response.version_info,
                        response.nonce,
                        len(response.content),
                    )
                    wire = response.wire()
                    writing = time.perf_counter()
                    await context.write(wire)
                    if self.observers:
                        self._emit(
                            StreamEvent(
                                "push",
                                protocol.node_id,
                                peer,
                                response.type_url,
                                response.version_info,
                                response.nonce,
                                generation=protocol.generation,
                                size=len(wire),
                                seconds=time.perf_counter() - writing,
                            )
                        )
        finally:
            reader.cancel()
            if secrets_task is not None:
                secrets_task.cancel()
            if self.identity is not None and protocol is not None:
                self.identity.release(protocol.node_id, bound)
            if handle is not None:
                self.source.disconnect(handle)
            if stream_id is not None:
                self.streams.pop(stream_id, None)
            if protocol is not None:
                log.info("proxy %s disconnected", protocol.node_id)
                self._emit(StreamEvent("close", protocol.node_id, peer))

    @staticmethod
    def _nacks(protocol: SotwStream, type_url: str) -> int:
        state = protocol.types.get(type_url)
        return state.nacks if state is not None else 0

    def _report_nack(self, protocol: SotwStream, type_url: str) -> None:
        state = protocol.types[type_url]
        accepted = state.acked_generation
        if accepted < 0:  # this proxy never accepted this type: what others accepted
            accepted = max(
                (
                    other.acked_generation
                    for info in self.streams.values()
                    if (other := info.protocol.types.get(type_url)) is not None
                ),
                default=-1,
            )
        self._emit(
            StreamEvent(
                "nack",
                protocol.node_id,
                type_url=type_url,
                version=state.nacked_version or "",
                nonce=state.sent_nonce,
                detail=state.nack_message,
            )
        )
        if self.on_nack is not None:
            self.on_nack(
                Nack(
                    protocol.node_id,
                    type_url,
                    state.nack_message,
                    state.nacked_generation,
                    accepted,
                    state.nacked_version or "",
                )
            )

    @staticmethod
    def _log_request(node_id: str, request) -> None:
        if request.HasField("error_detail"):
            log.warning(
                "%s rejected %s version %s: %s",
                safe_text(node_id, 256),
                _short(request.type_url),
                safe_text(getattr(request, "version_info", "") or "-", 64),
                safe_text(request.error_detail.message),
            )
        elif not isinstance(request, discovery_pb2.DiscoveryRequest):
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "<- %s %s (delta) nonce=%s sub=%s unsub=%s initial=%d",
                    safe_text(node_id, 256),
                    safe_text(_short(request.type_url), 200),
                    safe_text(request.response_nonce, 64),
                    safe_text(str(list(request.resource_names_subscribe)[:5]), 500),
                    safe_text(str(list(request.resource_names_unsubscribe)[:5]), 500),
                    len(request.initial_resource_versions),
                )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(
                "<- %s %s v=%s nonce=%s names=%s",
                safe_text(node_id, 256),
                safe_text(_short(request.type_url), 200),
                safe_text(request.version_info, 64),
                safe_text(request.response_nonce, 64),
                safe_text(str(list(request.resource_names)[:5]), 500),
            )

    def accepted_elsewhere(self, node_id: str, type_url: str, version: str) -> list[str]:
        """Other proxies that accepted exactly this content of this type."""
        return sorted(
            info.node_id
            for info in self.streams.values()
            if info.node_id != node_id
            and (state := info.protocol.types.get(type_url)) is not None
            and state.acked_version == version
        )

    def latest_streams(self) -> dict[str, StreamInfo]:
        """The newest stream of every connected node id."""
        return newest_per_node(self.streams.values(), lambda info: info.node_id)


_HOST_PORT = re.compile(r"[A-Za-z0-9][-A-Za-z0-9.]{0,252}:[0-9]{1,5}")


def node_facts(node) -> dict[str, str]:
    """What proxy-status shows of a node: its cluster, Envoy version and admin address."""
    version = node.user_agent_build_version.version
    admin = node.metadata.fields.get(ADMIN_ADDRESS)
    return {
        "cluster": safe_text(node.cluster, 256),
        "envoy_version": f"{version.major_number}.{version.minor_number}.{version.patch}"
        if node.HasField("user_agent_build_version")
        else "",
        # Only host:port: the server reads this proxy's admin API there (proxy-status,
        # the mesh page), and nothing else.
        "admin": admin.string_value
        if admin is not None and _HOST_PORT.fullmatch(admin.string_value)
        else "",
    }


def _over_tls(context) -> bool:
    """Whether the stream's connection is TLS (the server's TLS port)."""
    try:
        found = context.auth_context().get("transport_security_type", [])
    except Exception:  # a context without one (tests' fakes): not TLS
        return False
    return b"ssl" in found
