"""What capture mode costs the translator: a captured sidecar (INTERCEPTION_MODE
REDIRECT) with 10 / 100 / 1000 services, on the world of bench/translation.py.

Prints, per size, the median of several fresh worlds: an uncaptured sidecar (which builds
its namespace's view), then the first captured sidecar of that namespace (the view's
capture facts: its HTTP ports and DNS table; its route configuration per port; the
proxy's own listeners), and each further captured sidecar of the namespace.

    python bench/capture.py [--sizes 10,100,1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from bench.translation import build_world
from translators.snapshot import Translator, World
from xds_server import heap


def measure(count: int, runs: int) -> dict[str, float]:
    world = build_world(count)
    _ = world.services
    heap.settle()
    first = world.proxies[0]
    captured = [
        dataclasses.replace(p, interception="REDIRECT")
        for p in world.proxies
        if p.namespace == first.namespace
    ][:11]
    plain, first_captured, next_captured = [], [], []
    for _ in range(runs):
        fresh = World(world.config, world.proxies)
        fresh.__dict__["services"] = world.services
        translator = Translator(fresh)
        started = time.perf_counter()
        translator.translate(first)
        view_built = time.perf_counter()
        translator.translate(captured[0])
        one = time.perf_counter()
        for proxy in captured[1:]:
            translator.translate(proxy)
        done = time.perf_counter()
        plain.append(view_built - started)
        first_captured.append(one - view_built)
        next_captured.append((done - one) / max(1, len(captured) - 1))
    return {
        "uncaptured_ms": statistics.median(plain) * 1000,
        "first_captured_ms": statistics.median(first_captured) * 1000,
        "next_captured_ms": statistics.median(next_captured) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'services':>8} {'uncaptured':>11} {'1st captured':>13} {'next captured':>14}")
    for size in (int(s) for s in args.sizes.split(",")):
        m = measure(size, args.runs)
        print(
            f"{size:>8} {m['uncaptured_ms']:>9.1f}ms {m['first_captured_ms']:>11.1f}ms "
            f"{m['next_captured_ms']:>12.2f}ms"
        )


if __name__ == "__main__":
    main()
