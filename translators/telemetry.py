"""What a proxy reports, on each side: the mesh config's telemetry settings and the
Telemetry resources that apply to its workload, resolved as Istio resolves them.

Telemetry resources apply from the root namespace (no selector), then the proxy's
namespace (no selector), then those whose selector matches the workload; each later one
overrides what it sets (providers, sampling, disabled...), and metric overrides
accumulate in that order. The client side is a sidecar's outbound side and a gateway;
the server side a sidecar's inbound side (Istio's CLIENT and SERVER modes).

Where no Telemetry names providers, the mesh's `defaultProviders` do; without those,
metrics go to Prometheus (Istio's default), access logs to `accessLogFile` when it is
set, and spans to `defaultConfig.tracing.zipkin` when `enableTracing` (default true).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from google.protobuf import json_format

from protos import mesh_config_pb2, telemetry_pb2
from translators import model
from translators.access_logs import FileSink
from translators.istio_metrics import (
    HTTP_METRICS,
    ISTIO_NAMES,
    TCP_METRICS,
    UNKNOWN,
    MetricSettings,
    Workload,
    app_of,
    version_of,
)
from translators.naming import has_labels
from translators.tracing import OPENTELEMETRY, ZIPKIN, Collector, CustomTag, TracingSettings

CLIENT, SERVER = "CLIENT", "SERVER"
PROMETHEUS, ENVOY = "prometheus", "envoy"  # Istio's built-in providers
DEFAULT_SAMPLING = 1.0  # percent: Istio's PILOT_TRACE_SAMPLING
_ALL = HTTP_METRICS + TCP_METRICS


@dataclass(frozen=True)
class SideTelemetry:
    metrics: MetricSettings | None = None  # None: no Prometheus metrics on this side
    logs: tuple[FileSink, ...] = ()
    tracing: TracingSettings | None = None


@dataclass(frozen=True)
class ProxyTelemetry:
    me: Workload
    client: SideTelemetry
    server: SideTelemetry

    def collectors(self) -> set[Collector]:
        return {s.tracing.collector for s in (self.client, self.server) if s.tracing}


def workload_of(proxy: model.Proxy, trust_domain: str) -> Workload:
    principal = (
        f"spiffe://{trust_domain or model.CLUSTER_DOMAIN}/ns/{proxy.namespace}/sa/"
        f"{proxy.service_account}"
        if proxy.mtls
        else UNKNOWN
    )
    return Workload(
        proxy.workload, proxy.namespace, app_of(proxy.labels), version_of(proxy.labels), principal
    )


def proxy_config(mesh: mesh_config_pb2.MeshConfig) -> mesh_config_pb2.ProxyConfig:
    """The applied parts of defaultConfig (checked when the mesh config loaded)."""
    return _proxy_config(mesh.default_config.SerializeToString(deterministic=True))


@lru_cache(maxsize=16)
def _proxy_config(struct_bytes: bytes) -> mesh_config_pb2.ProxyConfig:
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct.FromString(struct_bytes)
    out = mesh_config_pb2.ProxyConfig()
    known = {k: v for k, v in json_format.MessageToDict(struct).items() if k in _PROXY_KEYS}
    json_format.ParseDict(known, out, ignore_unknown_fields=True)
    return out


_PROXY_KEYS = ("tracing", "proxyStatsMatcher")


def applicable(config: model.MeshConfig, proxy: model.Proxy) -> list[model.ConfigResource]:
    """The Telemetry resources of `proxy`'s workload, least specific first, as Istio picks
    them: the root namespace's oldest without a selector, the proxy's namespace's oldest
    without one, and the oldest in the proxy's namespace whose selector matches."""
    root = config.mesh.root_namespace
    mesh_wide = namespace_wide = workload = None
    for res in sorted(config.of_kind(model.TELEMETRY), key=lambda r: r.order_key()):
        selector = res.spec.selector.match_labels if res.spec.HasField("selector") else {}
        if not selector:
            if res.namespace == root and mesh_wide is None:
                mesh_wide = res
            elif res.namespace == proxy.namespace and namespace_wide is None:
                namespace_wide = res
        elif (
            res.namespace == proxy.namespace
            and workload is None
            and has_labels(proxy.labels, selector)
        ):
            workload = res
    return [r for r in (mesh_wide, namespace_wide, workload) if r is not None]


def _matches(mode: int, side: str) -> bool:
    name = telemetry_pb2.WorkloadMode.Name(mode)
    return name == "CLIENT_AND_SERVER" or name == side


def resolve(config: model.MeshConfig, proxy: model.Proxy) -> ProxyTelemetry:
    return ProxyTelemetry(
        workload_of(proxy, config.mesh.trust_domain), *sides(config, applicable(config, proxy))
    )


def sides(
    config: model.MeshConfig, resources: list[model.ConfigResource]
) -> tuple[SideTelemetry, SideTelemetry]:
    """(client, server) under `resources` (applicable's, in its order)."""
    return _side(config.mesh, resources, CLIENT), _side(config.mesh, resources, SERVER)


def _providers(mesh: mesh_config_pb2.MeshConfig) -> dict[str, mesh_config_pb2.ExtensionProvider]:
    return {p.name: p for p in mesh.extension_providers}


def _side(
    mesh: mesh_config_pb2.MeshConfig, resources: Iterable[model.ConfigResource], side: str
) -> SideTelemetry:
    resources = list(resources)
    return SideTelemetry(
        metrics=_metrics(mesh, resources, side),
        logs=_logs(mesh, resources, side),
        tracing=_tracing(mesh, resources, side),
    )


def _metrics(mesh, resources, side: str) -> MetricSettings | None:
    providers = list(mesh.default_providers.metrics) or [PROMETHEUS]
    disabled: set[str] = set()
    overrides: list[tuple[str, tuple[tuple[str, str | None], ...]]] = []
    for res in resources:
        for metrics in res.spec.metrics:
            if metrics.providers:
                providers = [p.name for p in metrics.providers]
            for override in metrics.overrides:
                if not _matches(override.match.mode, side):
                    continue
                chosen = _chosen_metrics(override.match)
                if override.HasField("disabled"):
                    if override.disabled.value:
                        disabled.update(chosen)
                    else:
                        disabled.difference_update(chosen)
                changes = tuple(
                    (label, None if tag.operation == tag.REMOVE else expression_format(tag.value))
                    for label, tag in sorted(override.tag_overrides.items())
                )
                if changes:
                    overrides.extend((metric, changes) for metric in chosen)
    named = _providers(mesh)
    if not any(
        p == PROMETHEUS or (p in named and named[p].WhichOneof("provider") == PROMETHEUS)
        for p in providers
    ):
        return None
    return MetricSettings(frozenset(disabled), tuple(overrides))


def _chosen_metrics(match: telemetry_pb2.MetricSelector) -> tuple[str, ...]:
    if match.WhichOneof("metric_match") == "custom_metric":
        found = ISTIO_NAMES.get(match.custom_metric)
        return (found,) if found else ()
    metric = telemetry_pb2.IstioMetric.Name(match.metric)
    return _ALL if metric == "ALL_METRICS" else (metric,) if metric in _ALL else ()


def expression_format(expression: str) -> str:
    """A Telemetry expression (CEL, over Envoy's attributes) as a tag value."""
    return f"%CEL({expression})%"


def _logs(mesh, resources, side: str) -> tuple[FileSink, ...]:
    """Istio's merge of access logging, per provider, from the mesh's defaults: each
    entry (of this side's mode) turns its providers (else the ones named before it, else
    the defaults) on with its filter, or off when `disabled`."""
    # accessLogFile configures the built-in `envoy` provider, which is then a default.
    defaults = list(mesh.default_providers.access_logging) or (
        [ENVOY] if mesh.access_log_file else []
    )
    entries = [entry for res in resources for entry in res.spec.access_logging]
    enabled: dict[str, str] = {name: "" for name in defaults}  # provider -> its filter
    named = defaults
    for entry in entries:
        names = [p.name for p in entry.providers] or named
        named = names
        if not _matches(entry.match.mode, side):
            continue
        for name in names:
            if entry.HasField("disabled") and entry.disabled.value:
                enabled.pop(name, None)
            else:
                enabled[name] = entry.filter.expression if entry.HasField("filter") else ""
    return _sinks(mesh, enabled)


def _sinks(mesh, enabled: dict[str, str]) -> tuple[FileSink, ...]:
    named = _providers(mesh)
    sinks = []
    for name, expression in enabled.items():
        if name == ENVOY:
            sinks.append(_mesh_sink(mesh, mesh.access_log_file or "/dev/stdout", expression))
            continue
        provider = named.get(name)
        if provider is None or provider.WhichOneof("provider") != "envoy_file_access_log":
            continue
        settings = provider.envoy_file_access_log
        log_format = settings.log_format
        if log_format.WhichOneof("log_format") == "labels":
            labels = sorted(json_format.MessageToDict(log_format.labels).items())
            sinks.append(
                FileSink(
                    settings.path,
                    json=True,
                    labels=tuple((k, str(v)) for k, v in labels),
                    filter=expression,
                )
            )
        else:
            sinks.append(FileSink(settings.path, text=log_format.text, filter=expression))
    return tuple(sinks)


def _mesh_sink(mesh, path: str, expression: str) -> FileSink:
    json = mesh.access_log_encoding == mesh_config_pb2.JSON
    if json:
        return FileSink(path, json=True, filter=expression)
    return FileSink(path, text=mesh.access_log_format, filter=expression)


def _tracing(mesh, resources, side: str) -> TracingSettings | None:
    defaults = proxy_config(mesh).tracing
    providers: list[str] = list(mesh.default_providers.tracing)
    sampling = defaults.sampling if defaults.sampling > 0 else None
    disabled = False
    tags: dict[str, CustomTag] = {
        name: _tag(name, tag) for name, tag in sorted(defaults.custom_tags.items())
    }
    for res in resources:
        for tracing in res.spec.tracing:
            if not _matches(tracing.match.mode, side):
                continue
            if tracing.providers:
                providers = [p.name for p in tracing.providers]
            if tracing.HasField("random_sampling_percentage"):
                sampling = tracing.random_sampling_percentage.value
            if tracing.HasField("disable_span_reporting"):
                disabled = tracing.disable_span_reporting.value
            for name, tag in sorted(tracing.custom_tags.items()):
                tags[name] = _tag(name, tag)
    if disabled:
        return None
    collector = None
    if providers:
        collector = _collector(_providers(mesh).get(providers[0]))
    else:  # Istio's legacy path: the mesh's zipkin address, when tracing is on
        enabled = not mesh.HasField("enable_tracing") or mesh.enable_tracing.value
        if enabled and defaults.zipkin.address:
            host, _, port = defaults.zipkin.address.rpartition(":")
            collector = Collector(ZIPKIN, host, int(port))
    if collector is None:
        return None
    return TracingSettings(
        collector,
        DEFAULT_SAMPLING if sampling is None else sampling,
        tuple(tags.values()),
        collector.max_tag_length or defaults.max_path_tag_length,
    )


def _collector(provider: mesh_config_pb2.ExtensionProvider | None) -> Collector | None:
    if provider is None:
        return None
    kind = provider.WhichOneof("provider")
    if kind == "zipkin":
        z = provider.zipkin
        return Collector(
            ZIPKIN,
            z.service,
            z.port,
            path=z.path,
            max_tag_length=z.max_tag_length,
            trace_id_64bit=z.enable_64bit_trace_id,
        )
    if kind == "opentelemetry":
        o = provider.opentelemetry
        http = o.HasField("http")
        timeout = o.http.timeout
        return Collector(
            OPENTELEMETRY,
            o.service,
            o.port,
            path=o.http.path if http else "",
            max_tag_length=o.max_tag_length,
            http=http,
            timeout_ms=timeout.seconds * 1000 + timeout.nanos // 1_000_000,
        )
    return None


def _tag(name: str, tag) -> CustomTag:
    kind = tag.WhichOneof("type")
    if kind == "literal":
        return CustomTag(name, "literal", tag.literal.value)
    if kind == "environment":
        return CustomTag(name, "environment", tag.environment.name, tag.environment.default_value)
    return CustomTag(name, "header", tag.header.name, tag.header.default_value)
