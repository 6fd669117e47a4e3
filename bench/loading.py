"""Loading thousands of files, and what one more file costs the server.

Two directories of N files: one ServiceEntry each (the shape the goal names), and a
Service, a two-subset DestinationRule and a VirtualService each (three resources). For
each, as the server runs it:
- load: ConfigWatcher reading and checking everything in a worker thread, with a state
  directory keeping the texts; the longest event-loop stall meanwhile (a 5 ms ticker);
- serving: load plus the first sidecar's translation, the point where it can answer;
- one more file: the store taking in one more file plus the translation for a connected
  sidecar (one namespace view), the server work of the push (median of 5);
- new stream: the full config for one more sidecar connecting, in a namespace already
  served and in a new one (what its first CDS request waits for; median of 5).
Then one large file. Every figure is server work in this process, no network.

    python bench/loading.py [--files 1000,5000] [--large-mb 4]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from pathlib import Path

from translation import TEMPLATE

from translators import model
from translators.cache import CrossPushCache
from translators.snapshot import Translator, World
from xds_server import heap
from xds_server.config.memory import ConfigMemory
from xds_server.config.store import ConfigStore
from xds_server.config.watcher import ConfigWatcher

# One Service, a two-subset DestinationRule and a VirtualService, as bench/translation.py.
TRIPLE = TEMPLATE.replace("namespace: ns-%(ns)d", "namespace: default")
ENTRY = """apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: ext-%(i)d, namespace: default}
spec:
  hosts: [ext-%(i)d.example.com]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"""
SHAPES = {"ServiceEntry": ENTRY, "Service+DR+VS": TRIPLE}


def _proxy(name: str, namespace: str = "default") -> model.Proxy:
    return model.Proxy(
        name,
        namespace=namespace,
        labels={"app": name},
        ip="10.0.0.1",
        ports=(model.WorkloadPort(8080, 15006),),
    )


async def _measure(load) -> tuple[float, float]:
    """(seconds the load took, longest event-loop stall in seconds)."""
    worst = 0.0
    running = True

    async def ticker() -> None:
        nonlocal worst
        while running:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - before - 0.005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    await load()
    took = time.perf_counter() - started
    running = False
    await task
    return took, worst


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def measure(directory: Path, template: str, count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as state:
        store = ConfigStore(directory, max_file_bytes=64 << 20, memory=ConfigMemory(Path(state)))
        watcher = ConfigWatcher(store, lambda _: None)
        load, stall = asyncio.run(_measure(watcher.load))
        cache = CrossPushCache()
        proxy = _proxy("first")
        started = time.perf_counter()
        translator = Translator(World(store.snapshot, (proxy,), cache=cache))
        translator.translate(proxy)
        first = time.perf_counter() - started
        heap.settle()  # as the server does after its first load
        pushes, joins, strangers = [], [], []
        for k in range(5):
            path = directory / f"more-{k}.yaml"
            path.write_text(template % {"i": count + k})
            started = time.perf_counter()
            store.update([path])
            cache.next_round()
            world = World(store.snapshot, (proxy,), cache=cache)
            translator = Translator.after_config_change(translator, world)
            translator.translate(proxy)
            pushes.append(time.perf_counter() - started)
        for k in range(5):
            for namespace, into in (("default", joins), (f"new-{k}", strangers)):
                started = time.perf_counter()
                translator.translate(_proxy(f"joining-{k}", namespace))
                into.append(time.perf_counter() - started)
        gc.unfreeze()
        return {
            "resources": len(store.snapshot.resources),
            "load": load,
            "stall": stall * 1000,
            "serving": load + first,
            "push": _median_ms(pushes),
            "join": _median_ms(joins),
            "stranger": _median_ms(strangers),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="1000,5000")
    parser.add_argument("--large-mb", type=float, default=4.0)
    args = parser.parse_args()
    print(
        f"{'input':>28} {'MB':>5} {'resources':>9} {'load s':>7} {'stall ms':>8}"
        f" {'serving s':>9} {'one more ms':>11} {'new stream ms':>16}"
    )
    cases = [
        (f"{count} files, {shape}", template, count, False)
        for count in (int(n) for n in args.files.split(","))
        for shape, template in SHAPES.items()
    ]
    cases.append((f"one {args.large_mb:g} MB file", TRIPLE, 0, True))
    for what, template, count, large in cases:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            if large:
                repeat = int(args.large_mb * 1e6 / len(template % {"i": 0})) + 1
                text = "---\n".join(template % {"i": i} for i in range(repeat))
                (directory / "large.yaml").write_text(text)
                count = repeat
            else:
                for i in range(count):
                    (directory / f"svc-{i}.yaml").write_text(template % {"i": i})
            size = sum(p.stat().st_size for p in directory.iterdir()) / 1e6
            found = measure(directory, template, count)
            print(
                f"{what:>28} {size:5.1f} {found['resources']:9d} {found['load']:7.2f}"
                f" {found['stall']:8.0f} {found['serving']:9.2f} {found['push']:11.1f}"
                f" {found['join']:7.1f} / {found['stranger']:6.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
