"""The traffic graph of the live mesh page: who calls which service, how often, and how
many calls fail, read from the proxies' own Istio metrics (istio_requests_total,
reporter=source) through their admin APIs, polled when the page asks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# Envoy's admin names the stat istio.requests_total: its Prometheus form is renamed by
# the proxies' 15090 listener, not here.
_QUERY = "/stats/prometheus?usedonly&filter=istio%5C.requests_total"
_METRIC = "envoy_istio_requests_total"
MAX_BYTES = 4 * 1024 * 1024  # one proxy's answer, at most


@dataclass
class TrafficGraph:
    """Totals seen at the last poll, to turn counts into rates."""

    timeout: float = 2.0
    fresh: float = 2.0  # seconds a poll's answer serves every page that asks
    _last: dict[tuple[str, str], tuple[float, float, float]] = field(default_factory=dict)
    _answer: tuple[float, dict] | None = None
    _polling: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def poll(self, admins: Iterable[tuple[str, str]]) -> dict:
        """Nodes and edges from every (node id, admin address) that answers; one poll at a
        time, and its answer kept a moment, however many pages ask."""
        async with self._polling:
            if self._answer is not None and time.monotonic() - self._answer[0] < self.fresh:
                return self._answer[1]
            answer = await self._poll(admins)
            self._answer = (time.monotonic(), answer)
            return answer

    async def _poll(self, admins: Iterable[tuple[str, str]]) -> dict:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout)
        ) as session:
            texts = await asyncio.gather(
                *(self._scrape(session, admin) for _, admin in admins if admin),
                return_exceptions=True,
            )
        answered = [t for t in texts if isinstance(t, str)]  # others: no edges this time
        # Parsing is work: off the event loop, which serves xDS.
        totals = await asyncio.to_thread(_totals, answered)
        return self._edges(totals)

    def _edges(self, totals: dict[tuple[str, str], list[float]]) -> dict:
        now = time.monotonic()
        edges = []
        for (source, destination), (count, errors) in sorted(totals.items()):
            before = self._last.get((source, destination))
            rate = 0.0
            if before is not None and now > before[2]:
                rate = max(0.0, (count - before[0]) / (now - before[2]))
            self._last[(source, destination)] = (count, errors, now)
            edges.append(
                {
                    "from": source,
                    "to": destination,
                    "requests": count,
                    "rps": round(rate, 2),
                    "error_share": round(errors / count, 3) if count else 0.0,
                }
            )
        nodes = sorted({e["from"] for e in edges} | {e["to"] for e in edges})
        return {"nodes": nodes, "edges": edges}

    @staticmethod
    async def _scrape(session: aiohttp.ClientSession, admin: str) -> str | None:
        async with session.get(f"http://{admin}{_QUERY}") as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_BYTES:
                    return None  # not what a proxy's filtered metrics look like
            return body.decode(errors="replace")


def _totals(texts: list[str]) -> dict[tuple[str, str], list[float]]:
    """(source workload, destination service) -> [requests, 5xx] over the proxies."""
    totals: dict[tuple[str, str], list[float]] = {}
    for text in texts:
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            continue  # not Prometheus text
        for family in families:
            for sample in family.samples:
                if sample.name != _METRIC or sample.labels.get("reporter") != "source":
                    continue
                key = (
                    sample.labels.get("source_workload", "unknown"),
                    sample.labels.get("destination_service_name")
                    or sample.labels.get("destination_service", "unknown"),
                )
                entry = totals.setdefault(key, [0.0, 0.0])
                entry[0] += sample.value
                if sample.labels.get("response_code", "").startswith("5"):
                    entry[1] += sample.value
    return totals
