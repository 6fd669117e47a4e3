"""Telemetry on a proxy's listeners: one pass over them once they are built.

Every HTTP connection manager and tcp_proxy gets its side's Istio metrics
(translators.istio_metrics), access logs and tracer; the client side also tells the
server who is calling (the source headers the server's metrics read). An inbound chain
that ends mutual TLS reports `connection_security_policy: mutual_tls` and reads the
caller from its certificate; its plaintext twin reports `none`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as data_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from translators.access_logs import file_logger
from translators.istio_metrics import SOURCE_HEADERS, UNKNOWN, Workload, http_loggers, tcp_loggers
from translators.resources import to_any
from translators.telemetry import ProxyTelemetry, SideTelemetry
from translators.tracing import Collector, hcm_tracing

HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
SOURCE_FILTER = "istio.source_headers"  # the header_mutation filter naming the caller


def instrument(
    listeners: Iterable[listener_pb2.Listener],
    telemetry: ProxyTelemetry,
    collectors: Mapping[Collector, str],
    gateway: bool = False,
) -> None:
    """Add telemetry to every connection manager and tcp_proxy of `listeners`, in place.
    `collectors`: the cluster each tracing collector is reached through."""
    for listener in listeners:
        server = listener.traffic_direction == base_pb2.INBOUND and not gateway
        side = telemetry.server if server else telemetry.client
        if side == _NOTHING and (server or telemetry.me.principal == UNKNOWN):
            continue
        chains = list(listener.filter_chains)
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        for chain in chains:
            mutual_tls = server and chain.HasField("transport_socket")
            _chain(chain, side, telemetry.me, server, mutual_tls, collectors, gateway)


_NOTHING = SideTelemetry()


def _chain(
    chain: listener_components_pb2.FilterChain,
    side: SideTelemetry,
    me: Workload,
    server: bool,
    mutual_tls: bool,
    collectors: Mapping[Collector, str],
    gateway: bool,
) -> None:
    for network_filter in chain.filters:
        if network_filter.name == HCM_FILTER:
            hcm = hcm_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(hcm)
            _http(hcm, side, me, server, mutual_tls, collectors, gateway)
            network_filter.typed_config.Pack(hcm)
        elif network_filter.name == TCP_PROXY_FILTER:
            proxy = tcp_proxy_pb2.TcpProxy()
            network_filter.typed_config.Unpack(proxy)
            _tcp(proxy, side, me, server, mutual_tls)
            network_filter.typed_config.Pack(proxy)


def _http(
    hcm: hcm_pb2.HttpConnectionManager,
    side: SideTelemetry,
    me: Workload,
    server: bool,
    mutual_tls: bool,
    collectors: Mapping[Collector, str],
    gateway: bool,
) -> None:
    if side.metrics is not None:
        hcm.access_log.extend(http_loggers(side.metrics, me, server, mutual_tls))
    hcm.access_log.extend(file_logger(sink) for sink in side.logs)
    if side.tracing is not None:
        cluster = collectors[side.tracing.collector]
        service = f"{me.app if me.app != UNKNOWN else me.name}.{me.namespace}"
        hcm.tracing.CopyFrom(hcm_tracing(side.tracing, cluster, service, gateway))
    if not server and me.principal != UNKNOWN:
        # Who is calling, for the server's metrics (it trusts this over mutual TLS only).
        hcm.http_filters.insert(0, source_headers(me))


@lru_cache(maxsize=4096)
def source_headers(me: Workload) -> hcm_pb2.HttpFilter:
    values = {
        "source_workload": me.name,
        "source_workload_namespace": me.namespace,
        "source_app": me.app,
        "source_version": me.version,
    }
    mutation = header_mutation_pb2.HeaderMutation()
    for label, header in SOURCE_HEADERS.items():
        option = mutation.mutations.request_mutations.add().append
        option.header.key = header
        option.header.value = values[label]
        option.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return hcm_pb2.HttpFilter(name=SOURCE_FILTER, typed_config=to_any(mutation))


def _tcp(
    proxy: tcp_proxy_pb2.TcpProxy,
    side: SideTelemetry,
    me: Workload,
    server: bool,
    mutual_tls: bool,
) -> None:
    if side.metrics is not None:
        loggers = tcp_loggers(side.metrics, me, server, mutual_tls)
        if loggers:
            proxy.access_log.extend(loggers)
            # The opened-connections counter is logged when the upstream connects.
            proxy.access_log_options.flush_access_log_on_connected = True
    for sink in side.logs:
        log = accesslog_pb2.AccessLog()
        log.CopyFrom(file_logger(sink))
        if proxy.access_log_options.flush_access_log_on_connected:
            _only_at_end(log)
        proxy.access_log.append(log)


def _only_at_end(log: accesslog_pb2.AccessLog) -> None:
    """A file log line per connection, at its end (not also when it connects)."""
    at_end = accesslog_pb2.AccessLogFilter()
    at_end.log_type_filter.types.append(data_pb2.TcpConnectionEnd)
    if log.HasField("filter"):
        both = accesslog_pb2.AccessLogFilter()
        both.and_filter.filters.extend([at_end, log.filter])
        log.filter.CopyFrom(both)
    else:
        log.filter.CopyFrom(at_end)
