"""Tracing: the connection manager's tracer (Zipkin or OpenTelemetry) and the cluster its
spans go to.

A collector named by a host of the registry (`zipkin.istio-system:9411`, or its full
name) is reached through that service's outbound cluster; any other host (a DNS name or
an IP) gets a cluster of its own, `tracing|<host>|<port>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import grpc_service_pb2, http_uri_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from translators.clusters import load_assignment
from translators.naming import is_ip, outbound_cluster
from translators.services import Endpoint

ZIPKIN, OPENTELEMETRY = "zipkin", "opentelemetry"
_TRACERS = {ZIPKIN: "envoy.tracers.zipkin", OPENTELEMETRY: "envoy.tracers.opentelemetry"}
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class Collector:
    """Where spans go: a provider of the mesh config, or defaultConfig.tracing.zipkin."""

    kind: str  # ZIPKIN or OPENTELEMETRY
    host: str
    port: int
    path: str = ""  # Zipkin's collector path; OpenTelemetry over HTTP: its path
    max_tag_length: int = 0
    trace_id_64bit: bool = False
    http: bool = False  # OpenTelemetry over HTTP instead of gRPC
    timeout_ms: int = 0


@dataclass(frozen=True)
class CustomTag:
    name: str
    kind: str  # literal, environment, header
    value: str  # the literal, or the variable's / header's name
    default: str = ""


@dataclass(frozen=True)
class TracingSettings:
    """One side's tracing, resolved (translators.telemetry)."""

    collector: Collector
    sampling: float  # percent of requests that start a trace here
    custom_tags: tuple[CustomTag, ...] = ()
    max_path_tag_length: int = 0


def collector_cluster_name(collector: Collector, services: Mapping[str, object]) -> str:
    """The cluster that reaches the collector: a registry service's, or its own."""
    host = registry_host(collector.host, services)
    if host is not None:
        return outbound_cluster(collector.port, host)
    return f"tracing|{collector.host}|{collector.port}"


def registry_host(host: str, services: Mapping[str, object]) -> str | None:
    """The registry's name for `host` as Istio users write collector addresses:
    `name.namespace`, the full name, or a ServiceEntry host."""
    for candidate in (host, f"{host}.svc.cluster.local", f"{host}.cluster.local"):
        if candidate in services:
            return candidate
    return None


def collector_cluster(
    collector: Collector, connect_timeout: duration_pb2.Duration | None = None
) -> cluster_pb2.Cluster:
    """A cluster of its own for a collector outside the registry."""
    timeout = connect_timeout or duration_pb2.Duration(seconds=1)
    return _collector_cluster(collector, timeout.seconds, timeout.nanos)


@lru_cache(maxsize=256)
def _collector_cluster(collector: Collector, seconds: int, nanos: int) -> cluster_pb2.Cluster:
    name = f"tracing|{collector.host}|{collector.port}"
    static = is_ip(collector.host)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC if static else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration_pb2.Duration(seconds=seconds, nanos=nanos),
        load_assignment=load_assignment(name, [Endpoint(collector.host, collector.port, {})]),
        dns_lookup_family=cluster_pb2.Cluster.V4_ONLY,
    )
    if collector.kind == OPENTELEMETRY and not collector.http:  # OTLP over gRPC
        options = http_protocol_options_pb2.HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.SetInParent()
        cluster.typed_extension_protocol_options[_HTTP_OPTIONS].Pack(options)
    return cluster


@lru_cache(maxsize=1024)
def hcm_tracing(
    settings: TracingSettings, cluster: str, service_name: str, gateway: bool = False
) -> hcm_pb2.HttpConnectionManager.Tracing:
    """The connection manager's tracing block, as Istio writes it: every request a
    client marks as traced is traced (client and overall sampling 100%), and
    `sampling` percent of the others start a trace here."""
    collector = settings.collector
    tracing = hcm_pb2.HttpConnectionManager.Tracing(
        client_sampling=percent_pb2.Percent(value=100.0),
        random_sampling=percent_pb2.Percent(value=min(max(settings.sampling, 0.0), 100.0)),
        overall_sampling=percent_pb2.Percent(value=100.0),
        provider=http_tracer_pb2.Tracing.Http(name=_TRACERS[collector.kind]),
    )
    if settings.max_path_tag_length:
        tracing.max_path_tag_length.value = settings.max_path_tag_length
    if gateway:
        tracing.spawn_upstream_span.value = True
    for tag in settings.custom_tags:
        tracing.custom_tags.append(_custom_tag(tag))
    if collector.kind == ZIPKIN:
        tracing.provider.typed_config.Pack(
            zipkin_pb2.ZipkinConfig(
                collector_cluster=cluster,
                collector_endpoint=collector.path or "/api/v2/spans",
                collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
                collector_hostname=collector.host,
                trace_id_128bit=not collector.trace_id_64bit,
                shared_span_context=wrappers_pb2.BoolValue(value=False),
            )
        )
    else:
        config = opentelemetry_pb2.OpenTelemetryConfig(service_name=service_name)
        if collector.http:
            config.http_service.http_uri.CopyFrom(
                http_uri_pb2.HttpUri(
                    uri=f"http://{collector.host}:{collector.port}{collector.path or '/v1/traces'}",
                    cluster=cluster,
                    timeout=duration_pb2.Duration(
                        seconds=collector.timeout_ms // 1000,
                        nanos=collector.timeout_ms % 1000 * 1_000_000,
                    )
                    if collector.timeout_ms
                    else duration_pb2.Duration(seconds=5),
                )
            )
        else:
            config.grpc_service.CopyFrom(
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                        cluster_name=cluster, authority=collector.host
                    )
                )
            )
        tracing.provider.typed_config.Pack(config)
    return tracing


def _custom_tag(tag: CustomTag) -> custom_tag_pb2.CustomTag:
    out = custom_tag_pb2.CustomTag(tag=tag.name)
    if tag.kind == "literal":
        out.literal.value = tag.value
    elif tag.kind == "environment":
        out.environment.name = tag.value
        out.environment.default_value = tag.default
    else:
        out.request_header.name = tag.value
        out.request_header.default_value = tag.default
    return out
