"""How long the event loop was held: a task that sleeps a short tick and records how late
it wakes. Every stream, health check and push waits behind a held loop, so this is the
figure that says whether the server stays responsive (shown at /debug/loopz)."""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field

TICK = 0.01


@dataclass
class LoopMonitor:
    max_stall: float = 0.0
    stalls_over_100ms: int = 0
    samples: int = 0
    since: float = field(default_factory=time.time)
    # Garbage collections of the oldest generation hold every thread: how long the
    # longest took, so a stall can be told apart from a slow handler.
    max_gc_pause: float = 0.0
    full_collections: int = 0
    _gc_started: float = 0.0

    def _on_gc(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.full_collections += 1
            self.max_gc_pause = max(self.max_gc_pause, time.perf_counter() - self._gc_started)

    async def run(self) -> None:
        gc.callbacks.append(self._on_gc)
        try:
            await self._tick()
        finally:
            gc.callbacks.remove(self._on_gc)

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            stall = time.perf_counter() - before - TICK
            self.samples += 1
            if stall > self.max_stall:
                self.max_stall = stall
            if stall > 0.1:
                self.stalls_over_100ms += 1

    def report(self, reset: bool = False) -> dict[str, float]:
        out = {
            "max_stall_ms": round(self.max_stall * 1000, 1),
            "stalls_over_100ms": self.stalls_over_100ms,
            "samples": self.samples,
            "since": self.since,
            "max_gc_pause_ms": round(self.max_gc_pause * 1000, 1),
            "full_collections": self.full_collections,
        }
        if reset:
            self.max_stall, self.stalls_over_100ms, self.samples = 0.0, 0, 0
            self.max_gc_pause, self.full_collections = 0.0, 0
            self.since = time.time()
        return out
