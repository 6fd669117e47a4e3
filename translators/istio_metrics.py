"""Istio's standard metrics from upstream Envoy: the stats access logger
(envoy.access_loggers.stats) with Istio's metric names and labels.

Each label is a command operator Envoy evaluates per request or connection, or a
literal the server knows (the proxy's own workload). What fills each label:

reporter=source (a sidecar's outbound side, and gateways)
  source_*            the proxy itself (literals)
  destination_workload, _app, _version
                      the upstream endpoint's metadata (EDS, translators.clusters)
  destination_service, _service_name, _service_namespace, _workload_namespace
                      the upstream cluster's metadata (CDS)
  destination_principal
                      the upstream's certificate (%UPSTREAM_PEER_URI_SAN%)
  connection_security_policy  "unknown", as Istio's client side reports it
reporter=destination (a sidecar's inbound side)
  destination_*       the proxy itself (literals); the service from the inbound cluster
  source_principal    the client's certificate (%DOWNSTREAM_PEER_URI_SAN%)
  source_workload, _workload_namespace, _app, _version
                      headers the client's sidecar sets (SOURCE_HEADERS), read only on
                      mutual TLS connections (bounded to the mesh's workloads)
  connection_security_policy  mutual_tls or none, by the filter chain
either
  request_protocol    http or grpc (by content-type; tcp for connections)
  response_code, grpc_response_status, response_flags

Envoy writes "-" where it has no value; the Prometheus port (xds_server.
prometheus_listener) shows Istio's "unknown" in its place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as data_pb2
from envoy.extensions.access_loggers.stats.v3 import stats_pb2
from google.protobuf import wrappers_pb2

from translators.resources import to_any

STATS_LOGGER = "envoy.access_loggers.stats"
STAT_PREFIX = "istio"  # Envoy's Prometheus output: envoy_istio_<name>, renamed on 15090
METADATA = "istio"  # the filter_metadata namespace of endpoints and clusters

# Istio's metric (Telemetry's IstioMetric enum) -> (our stat name, kind, value operator).
REQUEST_COUNT = "REQUEST_COUNT"
REQUEST_DURATION = "REQUEST_DURATION"
REQUEST_SIZE = "REQUEST_SIZE"
RESPONSE_SIZE = "RESPONSE_SIZE"
TCP_OPENED = "TCP_OPENED_CONNECTIONS"
TCP_CLOSED = "TCP_CLOSED_CONNECTIONS"
TCP_SENT = "TCP_SENT_BYTES"
TCP_RECEIVED = "TCP_RECEIVED_BYTES"
HTTP_METRICS = (REQUEST_COUNT, REQUEST_DURATION, REQUEST_SIZE, RESPONSE_SIZE)
TCP_METRICS = (TCP_OPENED, TCP_CLOSED, TCP_SENT, TCP_RECEIVED)
METRIC_NAMES = {
    REQUEST_COUNT: "requests_total",
    REQUEST_DURATION: "request_duration_milliseconds",
    REQUEST_SIZE: "request_bytes",
    RESPONSE_SIZE: "response_bytes",
    TCP_OPENED: "tcp_connections_opened_total",
    TCP_CLOSED: "tcp_connections_closed_total",
    TCP_SENT: "tcp_sent_bytes_total",
    TCP_RECEIVED: "tcp_received_bytes_total",
}
# Istio's metric names as users write them in Telemetry (custom_metric) and dashboards.
ISTIO_NAMES = {f"istio_{name}": metric for metric, name in METRIC_NAMES.items()}

SOURCE_HEADERS = {
    "source_workload": "x-mesh-source-workload",
    "source_workload_namespace": "x-mesh-source-namespace",
    "source_app": "x-mesh-source-app",
    "source_version": "x-mesh-source-version",
}
UNKNOWN = "unknown"
_GRPC = (
    "%CEL('content-type' in request.headers && "
    "request.headers['content-type'].startsWith('application/grpc') ? 'grpc' : 'http')%"
)


@dataclass(frozen=True)
class Workload:
    """What a proxy reports about itself."""

    name: str
    namespace: str
    app: str
    version: str
    principal: str  # its SPIFFE ID, or "unknown" without a certificate


def app_of(labels: Mapping[str, str]) -> str:
    return labels.get("app") or labels.get("app.kubernetes.io/name") or UNKNOWN


def version_of(labels: Mapping[str, str]) -> str:
    return labels.get("version") or labels.get("app.kubernetes.io/version") or UNKNOWN


def literal(value: str) -> str:
    """A fixed tag value: '%' would start a command operator."""
    return value.replace("%", "%%") if value else UNKNOWN


def _metadata(key: str, kind: str = "UPSTREAM") -> str:
    return f"%{kind}_METADATA({METADATA}:{key})%"


def client_labels(me: Workload, tcp: bool) -> dict[str, str]:
    """reporter=source: the proxy is the source; the destination comes from metadata."""
    labels = {
        "reporter": "source",
        "source_workload": literal(me.name),
        "source_workload_namespace": literal(me.namespace),
        "source_principal": literal(me.principal),
        "source_app": literal(me.app),
        "source_version": literal(me.version),
        "destination_workload": _metadata("workload"),
        # A service's endpoints are workloads of its own namespace (selectors are
        # namespace-scoped): the cluster says it once, not every endpoint.
        "destination_workload_namespace": _metadata("namespace", "CLUSTER"),
        "destination_principal": "%UPSTREAM_PEER_URI_SAN%",
        "destination_app": _metadata("app"),
        "destination_version": _metadata("version"),
        "destination_service": _metadata("service", "CLUSTER"),
        "destination_service_name": _metadata("name", "CLUSTER"),
        "destination_service_namespace": _metadata("namespace", "CLUSTER"),
        "connection_security_policy": UNKNOWN,
    }
    return {**labels, **_protocol_labels(tcp)}


def server_labels(me: Workload, tcp: bool, mutual_tls: bool) -> dict[str, str]:
    """reporter=destination: the proxy is the destination; the source comes from the
    client's certificate and, over mutual TLS, from its sidecar's headers."""
    labels = {"reporter": "destination"}
    for label, header in SOURCE_HEADERS.items():
        labels[label] = f"%REQ({header})%" if mutual_tls and not tcp else UNKNOWN
    labels["source_principal"] = "%DOWNSTREAM_PEER_URI_SAN%" if mutual_tls else UNKNOWN
    labels.update(
        {
            "destination_workload": literal(me.name),
            "destination_workload_namespace": literal(me.namespace),
            "destination_principal": literal(me.principal),
            "destination_app": literal(me.app),
            "destination_version": literal(me.version),
            "destination_service": _metadata("service", "CLUSTER"),
            "destination_service_name": _metadata("name", "CLUSTER"),
            "destination_service_namespace": _metadata("namespace", "CLUSTER"),
            "connection_security_policy": "mutual_tls" if mutual_tls else "none",
        }
    )
    return {**labels, **_protocol_labels(tcp)}


def _protocol_labels(tcp: bool) -> dict[str, str]:
    if tcp:
        return {"request_protocol": "tcp", "response_flags": "%RESPONSE_FLAGS%"}
    return {
        "request_protocol": _GRPC,
        "response_code": "%RESPONSE_CODE%",
        "grpc_response_status": "%GRPC_STATUS_NUMBER%",
        "response_flags": "%RESPONSE_FLAGS%",
    }


# Tag overrides: per metric, label -> value (a command operator or literal) or None to
# drop the label; and the metrics turned off.
Overrides = tuple[tuple[str, tuple[tuple[str, str | None], ...]], ...]


@dataclass(frozen=True)
class MetricSettings:
    """The Telemetry API's say on one side's metrics (translators.telemetry)."""

    disabled: frozenset[str] = frozenset()
    overrides: Overrides = ()  # (metric, ((label, value or None), ...)), applied in order

    def labels_of(self, metric: str, base: Mapping[str, str]) -> list[tuple[str, str]]:
        labels = dict(base)
        for name, changes in self.overrides:
            if name != metric:
                continue
            for label, value in changes:
                if value is None:
                    labels.pop(label, None)
                else:
                    labels[label] = value
        return list(labels.items())


DEFAULT_METRICS = MetricSettings()


def _stat(metric: str, labels: list[tuple[str, str]]) -> stats_pb2.Config.Stat:
    return stats_pb2.Config.Stat(
        name=METRIC_NAMES[metric],
        tags=[stats_pb2.Config.Tag(name=k, value_format=v) for k, v in labels],
    )


def _counter(
    settings: MetricSettings, metric: str, base: Mapping[str, str], value: str = ""
) -> stats_pb2.Config.Counter:
    """A counter of `metric`: by `value` (a command operator), else by one."""
    stat = _stat(metric, settings.labels_of(metric, base))
    if value:
        return stats_pb2.Config.Counter(stat=stat, value_format=value)
    return stats_pb2.Config.Counter(stat=stat, value_fixed=wrappers_pb2.UInt64Value(value=1))


def _logger(config: stats_pb2.Config, log_types=()) -> accesslog_pb2.AccessLog:
    log = accesslog_pb2.AccessLog(name=STATS_LOGGER, typed_config=to_any(config))
    if log_types:
        log.filter.log_type_filter.types.extend(log_types)
    return log


@lru_cache(maxsize=4096)
def http_loggers(
    settings: MetricSettings, me: Workload, server: bool, mutual_tls: bool = False
) -> tuple[accesslog_pb2.AccessLog, ...]:
    """The stats logger of an HTTP connection manager; none when every metric is off."""
    base = server_labels(me, False, mutual_tls) if server else client_labels(me, False)
    config = stats_pb2.Config(stat_prefix=STAT_PREFIX)
    if REQUEST_COUNT not in settings.disabled:
        config.counters.append(_counter(settings, REQUEST_COUNT, base))
    for metric, unit, value in (
        (REQUEST_DURATION, stats_pb2.Config.Histogram.Milliseconds, "%DURATION%"),
        (REQUEST_SIZE, stats_pb2.Config.Histogram.Bytes, "%BYTES_RECEIVED%"),
        (RESPONSE_SIZE, stats_pb2.Config.Histogram.Bytes, "%BYTES_SENT%"),
    ):
        if metric not in settings.disabled:
            config.histograms.append(
                stats_pb2.Config.Histogram(
                    stat=_stat(metric, settings.labels_of(metric, base)),
                    unit=unit,
                    value_format=value,
                )
            )
    if not config.counters and not config.histograms:
        return ()
    return (_logger(config),)


_CONNECTED = (data_pb2.TcpUpstreamConnected,)
_ENDED = (data_pb2.TcpConnectionEnd,)


@lru_cache(maxsize=4096)
def tcp_loggers(
    settings: MetricSettings, me: Workload, server: bool, mutual_tls: bool = False
) -> tuple[accesslog_pb2.AccessLog, ...]:
    """The stats loggers of a tcp_proxy: opened when the upstream connects (the proxy
    logs then too: flush_access_log_on_connected), the rest when the connection ends."""
    base = server_labels(me, True, mutual_tls) if server else client_labels(me, True)
    out = []
    if TCP_OPENED not in settings.disabled:
        opened = stats_pb2.Config(stat_prefix=STAT_PREFIX)
        opened.counters.append(_counter(settings, TCP_OPENED, base))
        out.append(_logger(opened, _CONNECTED))
    ended = stats_pb2.Config(stat_prefix=STAT_PREFIX)
    for metric, value in (
        (TCP_CLOSED, ""),
        (TCP_SENT, "%BYTES_SENT%"),
        (TCP_RECEIVED, "%BYTES_RECEIVED%"),
    ):
        if metric not in settings.disabled:
            ended.counters.append(_counter(settings, metric, base, value))
    if ended.counters:
        out.append(_logger(ended, _ENDED))
    return tuple(out)
