"""Telemetry: which metrics, logs and spans each side of a proxy gets (Istio's
precedence), the labels on each filter chain, the checks at load, the bootstrap's
Prometheus port and stats matcher."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.stats.v3 import stats_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.helpers import config_from, sidecar
from translators import model
from translators.istio_metrics import REQUEST_COUNT, REQUEST_DURATION
from translators.resources import LISTENER
from translators.snapshot import Translator, World
from translators.telemetry import resolve
from xds_server.bootstrap import BootstrapOptions, bootstrap, stats_matcher_of
from xds_server.config.loader import parse_file

ROOT = Path(__file__).resolve().parents[1]
SERVICE = """apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
"""


def telemetry(name: str, namespace: str, spec: str) -> str:
    return (
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )


def mesh(body: str) -> str:
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    return (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
        f"data:\n  mesh: |\n{indented}"
    )


def test_metrics_follow_istio_precedence_root_then_namespace_then_workload() -> None:
    config = config_from(
        telemetry(
            "all-off",
            "istio-system",
            "  metrics:\n  - providers: [{name: prometheus}]\n    overrides: [{disabled: true}]\n",
        ),
        telemetry(
            "count-on",
            "default",
            "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT}\n"
            "      disabled: false\n",
        ),
        telemetry(
            "v2-drops-a-label",
            "default",
            "  selector: {matchLabels: {version: v2}}\n  metrics:\n  - overrides:\n"
            "    - match: {metric: REQUEST_COUNT, mode: SERVER}\n"
            "      tagOverrides: {response_flags: {operation: REMOVE}}\n",
        ),
    )
    v1 = resolve(config, sidecar("reviews-v1", "reviews"))
    assert v1.client.metrics.disabled == v1.server.metrics.disabled
    assert REQUEST_COUNT not in v1.client.metrics.disabled
    assert REQUEST_DURATION in v1.client.metrics.disabled
    other = resolve(config, sidecar("x", "x", namespace="other"))
    assert REQUEST_COUNT in other.client.metrics.disabled
    v2 = resolve(config, sidecar("reviews-v2", "reviews", "v2"))
    assert v2.server.metrics.overrides == ((REQUEST_COUNT, (("response_flags", None),)),)
    assert v2.client.metrics.overrides == ()


def test_no_prometheus_provider_no_metrics_and_access_logs_per_mode() -> None:
    config = config_from(
        mesh("defaultProviders: {metrics: []}\naccessLogFile: /dev/stdout"),
        telemetry(
            "logs",
            "istio-system",
            "  metrics:\n  - providers: [{name: none-such}]\n"
            "  accessLogging:\n  - match: {mode: SERVER}\n    disabled: true\n",
        ),
    )
    found = resolve(config, sidecar("reviews-v1", "reviews"))
    assert found.client.metrics is None and found.server.metrics is None
    assert [s.path for s in found.client.logs] == ["/dev/stdout"]
    assert found.server.logs == ()


def test_tracing_from_the_mesh_and_from_providers() -> None:
    legacy = config_from(
        mesh("defaultConfig:\n  tracing:\n    zipkin: {address: 'zipkin.istio-system:9411'}\n")
    )
    found = resolve(legacy, sidecar("a", "a")).client.tracing
    assert (found.collector.host, found.collector.port, found.sampling) == (
        "zipkin.istio-system",
        9411,
        1.0,
    )
    off = config_from(
        mesh(
            "enableTracing: false\n"
            "defaultConfig:\n  tracing:\n    zipkin: {address: 'zipkin.istio-system:9411'}\n"
        )
    )
    assert resolve(off, sidecar("a", "a")).client.tracing is None
    otel = config_from(
        mesh(
            "extensionProviders:\n"
            "- {name: otel, opentelemetry: {service: otel.observability.svc.cluster.local, "
            "port: 4317}}\n"
        ),
        telemetry(
            "t",
            "istio-system",
            "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 25\n"
            "    customTags: {team: {literal: {value: mesh}}}\n",
        ),
        telemetry("quiet", "default", "  tracing:\n  - disableSpanReporting: true\n"),
    )
    traced = resolve(otel, sidecar("a", "a", namespace="other")).server.tracing
    assert traced.collector.kind == "opentelemetry" and traced.sampling == 25
    assert [t.name for t in traced.custom_tags] == ["team"]
    assert resolve(otel, sidecar("a", "a")).server.tracing is None


def _inbound_loggers(proxy: model.Proxy, *texts: str) -> dict[str, dict[str, str]]:
    """The stats logger tags of each inbound filter chain, by chain name."""
    config = config_from(SERVICE, *texts)
    resources = Translator(World(config, (proxy,))).translate(proxy)
    out = {}
    for packed in resources[LISTENER].values():
        listener = listener_pb2.Listener.FromString(packed.value)
        if listener.traffic_direction != 1:  # INBOUND
            continue
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.name != "envoy.filters.network.http_connection_manager":
                    continue
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                for log in hcm.access_log:
                    if log.name == "envoy.access_loggers.stats":
                        config_ = stats_pb2.Config()
                        log.typed_config.Unpack(config_)
                        tags = config_.counters[0].stat.tags
                        out[chain.name or "plaintext"] = {t.name: t.value_format for t in tags}
    return out


def test_mutual_tls_chains_read_the_caller_and_plaintext_chains_do_not() -> None:
    proxy = sidecar("reviews-v1", "reviews")
    secured = model.Proxy(**{**proxy.__dict__, "mtls": True})
    chains = _inbound_loggers(secured)
    (mtls,) = [tags for name, tags in chains.items() if name.endswith("mtls")]
    (plain,) = [tags for name, tags in chains.items() if not name.endswith("mtls")]
    assert mtls["connection_security_policy"] == "mutual_tls"
    assert mtls["source_principal"] == "%DOWNSTREAM_PEER_URI_SAN%"
    assert mtls["source_workload"] == "%REQ(x-mesh-source-workload)%"
    assert plain["connection_security_policy"] == "none"
    assert plain["source_workload"] == "unknown"
    assert mtls["destination_workload"] == "reviews-v1"
    assert mtls["destination_principal"] == "spiffe://cluster.local/ns/default/sa/default"


def test_a_tag_override_is_a_cel_expression() -> None:
    chains = _inbound_loggers(
        sidecar("reviews-v1", "reviews"),
        telemetry(
            "t",
            "istio-system",
            "  metrics:\n  - overrides:\n    - tagOverrides:\n"
            "        request_host: {value: request.host}\n"
            "        response_flags: {operation: REMOVE}\n",
        ),
    )
    (tags,) = chains.values()
    assert tags["request_host"] == "%CEL(request.host)%"
    assert "response_flags" not in tags


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (
            "  metrics:\n  - overrides:\n    - tagOverrides: {x: {value: 'request.host +'}}\n",
            "tagOverrides.x.value",
            "not a CEL expression",
        ),
        (
            "  metrics:\n  - overrides:\n"
            "    - tagOverrides: {x: {value: \"node.metadata['APP']\"}}\n",
            "tagOverrides.x.value",
            "'node' is not an attribute Envoy has",
        ),
        (
            "  accessLogging:\n  - filter: {expression: 'response.code >>= 400'}\n",
            "filter.expression",
            "not a CEL expression",
        ),
        (
            "  metrics:\n  - overrides:\n    - match: {customMetric: istio_nope}\n",
            "customMetric",
            "not one of Istio's metrics",
        ),
        ("  tracing:\n  - randomSamplingPercentage: 101\n", "randomSamplingPercentage", "0 to 100"),
        ("  targetRefs: [{kind: Service, name: x}]\n", "targetRefs", "not supported yet"),
    ],
)
def test_bad_telemetry_is_an_error_at_its_line(spec: str, field: str, words: str) -> None:
    parsed = parse_file("t.yaml", telemetry("t", "default", spec))
    (error,) = [i for i in parsed.issues if i.severity == "error"]
    assert error.field.endswith(field) and words in error.message, str(error)
    assert error.line >= 5


def test_seed_15_is_refused_with_the_istio_form() -> None:
    text = (ROOT / "examples" / "seed" / "15-telemetry-custom-metrics.yaml").read_text()
    (error,) = parse_file("seed15.yaml", text).issues
    assert error.field.endswith("metrics[0].dimensions")
    assert "tagOverrides" in error.message and error.line == 14


def test_mesh_telemetry_settings_are_checked() -> None:
    for body, field, words in (
        ("defaultConfig:\n  tracing: {sampling: 200}", "tracing.sampling", "0 to 100"),
        ("defaultConfig:\n  tracing: {zipkin: {address: nohost}}", "address", "HOST:PORT"),
        (
            "defaultConfig:\n  proxyStatsMatcher: {inclusionRegexps: ['(']}",
            "inclusionRegexps[0]",
            "",
        ),
        ("defaultConfig:\n  tracing: {zipkn: {}}", "tracing.zipkn", "unknown field"),
        ("accessLogEncoding: XML", "accessLogEncoding", "TEXT, JSON"),
    ):
        parsed = parse_file("mesh.yaml", mesh(body))
        errors = [i for i in parsed.issues if i.severity == "error"]
        assert len(errors) == 1, (body, [str(e) for e in errors])
        assert errors[0].field.endswith(field) and words in errors[0].message, str(errors[0])
    parsed = parse_file("mesh.yaml", mesh("defaultConfig:\n  concurrency: 2"))
    (warning,) = parsed.issues
    assert warning.severity == "warning" and "not applied" in warning.message


def test_bootstrap_serves_prometheus_and_keeps_the_stats_asked_for() -> None:
    seed = parse_file(
        "seed14.yaml", (ROOT / "examples" / "seed" / "14-mesh-config-tracing.yaml").read_text()
    )
    options = BootstrapOptions(node_id="a", stats_matcher=stats_matcher_of(seed.mesh))
    doc = bootstrap(options)
    (listener,) = doc["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 15090
    patterns = doc["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    assert {"safe_regex": {"regex": ".*outlier_detection.*"}} in patterns
    assert {"prefix": "istio."} in patterns  # Istio's metrics are always kept
    assert "stats_config" not in bootstrap(BootstrapOptions(node_id="a"))
    assert (
        "listeners"
        not in bootstrap(BootstrapOptions(node_id="a", stats_port=0))["static_resources"]
    )


def test_a_collector_outside_the_registry_gets_a_cluster_of_its_own() -> None:
    from envoy.config.cluster.v3 import cluster_pb2

    from translators.resources import CLUSTER

    config = config_from(
        SERVICE,
        mesh("defaultConfig:\n  tracing:\n    zipkin: {address: 'collector.example.com:9411'}\n"),
    )
    proxy = sidecar("reviews-v1", "reviews")
    resources = Translator(World(config, (proxy,))).translate(proxy)
    cluster = cluster_pb2.Cluster.FromString(
        resources[CLUSTER]["tracing|collector.example.com|9411"].value
    )
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    for packed in resources[LISTENER].values():
        listener = listener_pb2.Listener.FromString(packed.value)
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.name == "envoy.filters.network.http_connection_manager":
                    hcm = hcm_pb2.HttpConnectionManager()
                    f.typed_config.Unpack(hcm)
                    assert hcm.tracing.provider.name == "envoy.tracers.zipkin"
                    assert b"tracing|collector.example.com|9411" in (
                        hcm.tracing.provider.typed_config.value
                    )


def test_the_endpoint_index_follows_endpoint_changes_incrementally() -> None:
    """Which service reaches a proxy's port (its inbound metrics' destination_service):
    derived after an endpoint change, it equals a fresh one."""
    from translators.cache import CrossPushCache

    config = config_from(SERVICE)
    first = (sidecar("reviews-v1", "reviews"), sidecar("caller", "caller", ip="127.0.0.9"))
    cache = CrossPushCache()
    world = World(config, first, 1, cache)
    translator = Translator(world)
    for proxy in first:
        translator.translate(proxy)
    joined = (*first, sidecar("reviews-v2", "reviews", "v2", ip="127.0.0.3"))
    cache.endpoint_round()
    later = World(config, joined, 2, cache)
    translator = Translator.after_endpoint_change(translator, later)
    translator.translate(joined[-1])
    fresh = World(config, joined)
    assert later._endpoint_services == fresh._endpoint_services
    assert later.inbound_services(joined[-1]) == {
        9080: ("reviews.default.svc.cluster.local", "reviews", "default")
    }


def _created(text: str, when: str) -> str:
    return text.replace("metadata: {", f"metadata: {{creationTimestamp: '{when}', ", 1)


def test_istio_picks_one_telemetry_per_level_and_merges_logs_per_provider() -> None:
    config = config_from(
        mesh("accessLogFile: /dev/stdout"),
        # A root-namespace Telemetry with a selector applies only in the root namespace.
        telemetry(
            "root-selected",
            "istio-system",
            "  selector: {matchLabels: {app: reviews}}\n  accessLogging: [{disabled: true}]\n",
        ),
        # Off mesh-wide with a filter; the namespace turns `envoy` back on, filter reset.
        _created(
            telemetry(
                "root",
                "istio-system",
                "  accessLogging:\n  - providers: [{name: envoy}]\n"
                "    filter: {expression: 'response.code >= 400'}\n"
                "  - disabled: true\n",
            ),
            "2020-01-01T00:00:00Z",
        ),
        _created(
            telemetry("ns-old", "default", "  accessLogging: [{providers: [{name: envoy}]}]\n"),
            "2020-01-01T00:00:00Z",
        ),
        # Only the oldest namespace-wide Telemetry counts.
        _created(
            telemetry("ns-new", "default", "  accessLogging: [{disabled: true}]\n"),
            "2021-01-01T00:00:00Z",
        ),
    )
    found = resolve(config, sidecar("reviews-v1", "reviews"))
    assert [(s.path, s.filter) for s in found.client.logs] == [("/dev/stdout", "")]
    other = resolve(config, sidecar("x", "x", namespace="other"))
    assert other.client.logs == ()
