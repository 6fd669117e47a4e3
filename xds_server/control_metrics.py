"""The control plane's own metrics, on the debug port's /metrics, under istiod's names so
that istiod's dashboards work: connected proxies, pushes, push and send times, config
sizes, convergence, rejects; plus this server's translation time, config issues by file,
and the process collector.

istiod's counters are exposed without the `_total` suffix (`pilot_xds_pushes`), and so
are these. Everything is fed by the servicer's stream events and the mesh state's pushes
(no timing on the hot path beyond a clock read per response).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from translators.resources import SHORT_NAMES
from xds_server.ads.servicer import AdsServicer, StreamEvent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TYPES = {url: short.lower() for url, short in SHORT_NAMES.items()}
_SECONDS = (0.01, 0.1, 0.5, 1, 3, 5, 10, 20, 30)
_BYTES = (1, 10_000, 1_000_000, 4_000_000, 10_000_000, 40_000_000)


class ControlPlaneMetrics:
    """The registry behind /metrics, fed by `servicer`'s events."""

    def __init__(
        self,
        servicer: AdsServicer,
        generation_started: Callable[[int], float | None],
        issues: Callable[[], Iterable[Any]],
    ) -> None:
        self.registry = CollectorRegistry()
        self._servicer = servicer
        self._generation_started = generation_started
        self._issues = issues
        self.pushes: Tally[str] = Tally()
        self.rejects: Tally[str] = Tally()
        self._converged: dict[str, int] = {}  # node id -> the generation it converged at
        ProcessCollector(registry=self.registry)
        self.push_time = Histogram(
            "pilot_xds_push_time",
            "Time from a push's start to a response's write, by type (seconds)",
            ["type"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.send_time = Histogram(
            "pilot_xds_send_time",
            "Time to write one response to a stream (seconds)",
            buckets=(0.001, 0.01, 0.1, 1, 3, 5, 10),
            registry=self.registry,
        )
        self.config_size = Histogram(
            "pilot_xds_config_size_bytes",
            "Size of one response, by type (bytes)",
            ["type"],
            buckets=_BYTES,
            registry=self.registry,
        )
        self.convergence = Histogram(
            "pilot_proxy_convergence_time",
            "Time from a push's start to a proxy holding (ACKing) all of it (seconds)",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.translation = Histogram(
            "xds_server_push_seconds",
            "Time of one push: translation for every proxy it affects (seconds)",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
            registry=self.registry,
        )
        self.registry.register(_Live(self))
        servicer.observers.append(self.observe)

    def observe(self, event: StreamEvent) -> None:
        kind = _TYPES.get(event.type_url, "")
        if event.kind == "push":
            self.pushes[kind] += 1
            self.config_size.labels(kind).observe(event.size)
            self.send_time.observe(event.seconds)
            started = self._generation_started(event.generation)
            if started is not None:
                self.push_time.labels(kind).observe(max(0.0, time.monotonic() - started))
        elif event.kind == "nack":
            self.rejects[kind] += 1
        elif event.kind == "request":
            self._maybe_converged(event.node_id)
        elif event.kind == "close" and event.node_id not in self._servicer.latest_streams():
            self._converged.pop(event.node_id, None)  # unless a newer stream of it lives

    def _maybe_converged(self, node_id: str) -> None:
        """Once per proxy and generation: when every type it was sent is ACKed at the
        generation it was sent last."""
        info = self._servicer.latest_streams().get(node_id)
        if info is None:
            return
        generation = info.protocol.generation
        if self._converged.get(node_id) == generation:
            return
        states = list(info.protocol.types.values())
        if not states or any(
            s.sent_version is None or s.acked_version != s.sent_version for s in states
        ):
            return
        self._converged[node_id] = generation
        started = self._generation_started(generation)
        if started is not None:
            self.convergence.observe(max(0.0, time.monotonic() - started))

    def observe_push(self, seconds: float) -> None:
        self.translation.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Live:
    """What is read when scraped: connected proxies, counters, config issues."""

    def __init__(self, owner: ControlPlaneMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterable[Metric]:
        owner = self.owner
        connected = GaugeMetricFamily(
            "pilot_xds", "Proxies connected over xDS, by API", labels=["api"]
        )
        apis = Tally(info.protocol.api for info in owner._servicer.latest_streams().values())
        for api in ("sotw", "delta"):
            connected.add_metric([api], apis.get(api, 0))
        yield connected
        yield _counter("pilot_xds_pushes", "Responses sent, by type", owner.pushes)
        yield _counter(
            "pilot_total_xds_rejects", "Responses proxies NACKed, by type", owner.rejects
        )
        issues = GaugeMetricFamily(
            "xds_server_config_issues",
            "Current config errors and warnings, by file",
            labels=["file", "severity"],
        )
        for (file, severity), count in sorted(
            Tally((i.file, i.severity) for i in owner._issues()).items()
        ):
            issues.add_metric([file, severity], count)
        yield issues


def _counter(name: str, documentation: str, tally: Tally[str]) -> Metric:
    """A counter under istiod's name, without the `_total` suffix."""
    metric = Metric(name, documentation, "counter")
    for kind in ("cds", "eds", "lds", "rds", "sds"):
        metric.add_sample(name, {"type": kind}, float(tally.get(kind, 0)))
    return metric
