"""Telemetry through real Envoys: Istio's metrics on each proxy's Prometheus port, spans
to a Zipkin collector (seed 14, as written), trimmed stats, access logs in Istio's
formats, and the Telemetry API's overrides."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import rejections
from xds_server.launcher import LocalMesh, Workload, http_get, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

SERVICES = """apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec:
  selector: {app: zipkin}
  ports: [{name: http, port: 9411, targetPort: COLLECTOR_PORT}]
---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo}
spec:
  selector: {app: tcp-echo}
  ports: [{name: tcp, port: 9090, targetPort: 9080}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 18080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-in}
spec:
  hosts: ["*"]
  gateways: [ingress]
  http:
  - route: [{destination: {host: httpbin}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 50, interval: 10s, baseEjectionTime: 30s}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: zipkin, namespace: istio-system}
spec:
  address: 127.0.0.1
  labels: {app: zipkin}
"""
OVERRIDES = """apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 0
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides:
        request_protocol: {operation: REMOVE}
        request_method: {value: "request.method"}
"""
ACCESS_LOG = """
    accessLogFile: LOG_FILE
    accessLogEncoding: ENCODING
"""


class _Collector(http.server.BaseHTTPRequestHandler):
    """A Zipkin v2 collector: POST /api/v2/spans with a JSON list of spans."""

    spans: list[dict] = []
    lock = threading.Lock()

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b""
        for _ in range(100_000):
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if not size:
                self.rfile.readline()
                return body
            body += self.rfile.read(size)
            self.rfile.readline()
        return body

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        if self.path == "/api/v2/spans":
            with self.lock:
                self.spans.extend(json.loads(body))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def collector():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def _mesh_config(tmp: Path, encoding: str = "TEXT") -> str:
    seed = (ROOT / "examples" / "seed" / "14-mesh-config-tracing.yaml").read_text()
    return seed + ACCESS_LOG.replace("LOG_FILE", str(tmp / "access.log")).replace(
        "ENCODING", encoding
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, collector):
    root = tmp_path_factory.mktemp("telemetry")
    config = root / "mesh"
    config.mkdir()
    (config / "svc.yaml").write_text(SERVICES.replace("COLLECTOR_PORT", str(collector)))
    (config / "mesh.yaml").write_text(_mesh_config(root))
    workloads = [
        Workload("sleep", "sleep", app_port=None),
        Workload("httpbin-v1", "httpbin"),
        Workload("tcp-echo-v1", "tcp-echo"),
        Workload("ingress", "istio-ingressgateway", app_port=None, role="gateway"),
    ]
    with LocalMesh(config, workloads, root / "work", tokens=True) as running:
        wait_until(running.all_synced, 30, "every sidecar to sync")
        wait_until(lambda: _call(running, "httpbin") == 200, 20, "httpbin to answer")
        yield running
        rejected = rejections(running)
    assert not rejected, f"Envoy rejected configuration: {rejected}"


def _call(mesh: LocalMesh, host: str, path: str = "/", headers=None) -> int:
    ip, port = mesh.outbound("sleep")
    return http_get(
        f"http://{ip}:{port}{path}", timeout=5, headers={"Host": host, **(headers or {})}
    )[0]


def _samples(mesh: LocalMesh, workload: str, metric: str) -> list:
    status, body = http_get(mesh.stats_url(workload), timeout=5)
    assert status == 200, body
    assert "envoy_istio_" not in body  # renamed to Istio's names
    found = []
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == metric:
                found.append(sample)
    return found


def _count(mesh: LocalMesh, workload: str, metric: str, **labels: str) -> float:
    return sum(
        s.value
        for s in _samples(mesh, workload, metric)
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_istio_requests_total_counts_on_both_sides(mesh) -> None:
    """N requests: the client counts them as reporter=source, the server as
    reporter=destination, with Istio's labels; the server learns the caller over mTLS."""
    labels = {"response_code": "418", "request_protocol": "http"}
    before_source = _count(mesh, "sleep", "istio_requests_total", reporter="source", **labels)
    for _ in range(7):
        assert _call(mesh, "httpbin", headers={"x-status": "418"}) == 418
    wait_until(
        lambda: (
            _count(mesh, "sleep", "istio_requests_total", reporter="source", **labels)
            == before_source + 7
        ),
        10,
        "the client's count",
    )
    (source,) = [
        s
        for s in _samples(mesh, "sleep", "istio_requests_total")
        if s.labels.get("reporter") == "source" and s.labels.get("response_code") == "418"
    ]
    assert source.labels["source_workload"] == "sleep"
    assert source.labels["source_app"] == "sleep"
    assert source.labels["destination_workload"] == "httpbin-v1"
    assert source.labels["destination_app"] == "httpbin"
    assert source.labels["destination_version"] == "v1"
    assert source.labels["destination_service"] == "httpbin.default.svc.cluster.local"
    assert source.labels["destination_service_name"] == "httpbin"
    assert source.labels["destination_service_namespace"] == "default"
    assert source.labels["destination_principal"] == "spiffe://cluster.local/ns/default/sa/httpbin"
    assert source.labels["response_flags"] == "-"
    assert source.labels["grpc_response_status"] == ""
    (server,) = [
        s
        for s in _samples(mesh, "httpbin-v1", "istio_requests_total")
        if s.labels.get("response_code") == "418"
    ]
    assert server.labels["reporter"] == "destination"
    assert server.labels["source_workload"] == "sleep"
    assert server.labels["source_workload_namespace"] == "default"
    assert server.labels["source_principal"] == "spiffe://cluster.local/ns/default/sa/sleep"
    assert server.labels["destination_workload"] == "httpbin-v1"
    assert server.labels["destination_service"] == "httpbin.default.svc.cluster.local"
    assert server.labels["connection_security_policy"] == "mutual_tls"
    assert server.value >= 7
    # Histograms reach the admin API when Envoy flushes its stats (every 5 s).
    wait_until(
        lambda: (
            _count(
                mesh,
                "sleep",
                "istio_request_duration_milliseconds_count",
                reporter="source",
                **labels,
            )
            == before_source + 7
        ),
        20,
        "the client's durations",
    )
    wait_until(
        lambda: _count(mesh, "httpbin-v1", "istio_response_bytes_count", response_code="418") >= 7,
        20,
        "the server's response sizes",
    )


def test_tcp_connections_are_counted_on_both_sides(mesh) -> None:
    from tests.e2e.test_tcp_routes import exchange

    labels = {"destination_service": "tcp-echo.default.svc.cluster.local"}
    for _ in range(4):
        assert exchange(mesh.workload("sleep").ip, 9090) == "tcp-echo-v1"
    for metric in ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"):
        wait_until(
            lambda m=metric: _count(mesh, "sleep", m, reporter="source", **labels) == 4,
            10,
            f"the client's {metric}",
        )
    assert _count(mesh, "sleep", "istio_tcp_sent_bytes_total", **labels) > 0
    assert _count(mesh, "sleep", "istio_tcp_received_bytes_total", **labels) > 0
    (server,) = _samples(mesh, "tcp-echo-v1", "istio_tcp_connections_closed_total")
    assert server.value == 4 and server.labels["request_protocol"] == "tcp"
    assert server.labels["connection_security_policy"] == "mutual_tls"
    assert server.labels["source_principal"] == "spiffe://cluster.local/ns/default/sa/sleep"
    assert server.labels["destination_workload"] == "tcp-echo-v1"


def test_the_gateway_reports_as_the_source(mesh) -> None:
    ip = mesh.workload("ingress").ip
    wait_until(
        lambda: http_get(f"http://{ip}:18080/", timeout=5, headers={"x-status": "207"})[0] == 207,
        20,
        "the gateway to route",
    )
    labels = {"response_code": "207", "source_workload": "ingress"}
    assert _count(mesh, "ingress", "istio_requests_total", reporter="source", **labels) >= 1
    wait_until(
        lambda: (
            _count(mesh, "httpbin-v1", "istio_requests_total", reporter="destination", **labels)
            >= 1
        ),
        10,
        "httpbin to see the gateway as its caller",
    )


def test_seed_14_spans_reach_zipkin_with_one_trace_per_request(mesh) -> None:
    """Sampling 100: both sidecars report a span for the request, in one trace."""
    marker = f"/trace-{time.monotonic_ns()}"
    assert _call(mesh, "httpbin", marker) == 200

    def spans() -> list[dict]:
        with _Collector.lock:
            return [s for s in _Collector.spans if marker in s.get("tags", {}).get("http.url", "")]

    wait_until(lambda: {s["kind"] for s in spans()} >= {"CLIENT", "SERVER"}, 20, "both spans")
    assert len({s["traceId"] for s in spans()}) == 1


def test_stats_are_trimmed_to_the_seed_s_inclusion_regexps(mesh) -> None:
    kept = mesh.envoy_stats("sleep", "outlier_detection")
    assert kept, "stats matching .*outlier_detection.* are kept"
    trimmed = mesh.envoy_stats("sleep", r"^cluster\.outbound.*upstream_rq_total$")
    assert not trimmed, trimmed


def test_access_log_lines_in_istio_formats(mesh) -> None:
    log = mesh.work_dir.parent / "access.log"
    marker = f"/logged-{time.monotonic_ns()}"
    assert _call(mesh, "httpbin", marker) == 200
    line = re.compile(rf'^\[[^\]]+\] "GET {marker} HTTP/1\.1" 200 - via_upstream ')
    wait_until(
        lambda: log.exists() and any(line.match(x) for x in log.read_text().splitlines()),
        20,
        "a text access log line",
    )
    mesh.apply("mesh.yaml", _mesh_config(mesh.work_dir.parent, "JSON"))
    marker = f"/json-{time.monotonic_ns()}"

    def entries() -> list[dict]:
        out = []
        for text in log.read_text().splitlines():
            if text.startswith("{"):
                entry = json.loads(text)
                if entry.get("path") == marker:
                    out.append(entry)
        return out

    def both_sides() -> bool:
        # A connection the old listener took drains first (its next response closes it).
        assert _call(mesh, "httpbin", marker) == 200
        clusters = {e["upstream_cluster"].split("|")[0] for e in entries()}
        return clusters >= {"outbound", "inbound"}

    wait_until(both_sides, 20, "JSON lines from both sidecars", interval=0.3)
    entry = entries()[0]
    assert entry["method"] == "GET" and entry["response_code"] == 200
    assert {"upstream_cluster", "duration", "request_id", "authority"} <= entry.keys()


def test_telemetry_overrides_and_zero_sampling(mesh) -> None:
    """A tag override REMOVE drops a label and an UPSERT adds one from a CEL expression;
    tracing at 0% sends no span."""
    mesh.apply("telemetry.yaml", OVERRIDES)
    quiet = f"/quiet-{time.monotonic_ns()}"
    for _ in range(5):
        assert _call(mesh, "httpbin", quiet, headers={"x-status": "202"}) == 202
    wait_until(
        lambda: (
            _count(mesh, "sleep", "istio_requests_total", request_method="GET", response_code="202")
            == 5
        ),
        10,
        "the overridden series",
    )
    series = [
        s
        for s in _samples(mesh, "sleep", "istio_requests_total")
        if s.labels.get("request_method") == "GET"
    ]
    assert series and all("request_protocol" not in s.labels for s in series)
    # The server side keeps its labels (the override is CLIENT only).
    assert _count(mesh, "httpbin-v1", "istio_requests_total", request_protocol="http") > 0
    # Spans: none for the quiet requests; one flushed after them shows they would be here.
    mesh.apply("telemetry.yaml", OVERRIDES.replace("Percentage: 0", "Percentage: 100"))
    marker = f"/after-{time.monotonic_ns()}"
    assert _call(mesh, "httpbin", marker) == 200

    def urls() -> list[str]:
        with _Collector.lock:
            return [s.get("tags", {}).get("http.url", "") for s in _Collector.spans]

    wait_until(lambda: any(marker in u for u in urls()), 20, "the span after the quiet ones")
    assert not any(quiet in u for u in urls())
