"""How long loading the config directory takes, and how long it holds the event loop.

For many small files (one Service + DestinationRule + VirtualService each) and for one
large file, prints the load time, the throughput, and the longest stall of the asyncio
event loop while loading: once with the load run on the loop itself (what the server
did before) and once as the server does it now (ConfigWatcher: in a worker thread);
then how long the store takes to take in one more file.
A ticker task sleeps 5 ms in a loop; a stall is how late it wakes up.

    python bench/loading.py [--files 1000,5000] [--large-mb 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from translation import TEMPLATE

from xds_server.config.store import ConfigStore
from xds_server.config.watcher import ConfigWatcher

# One Service, a two-subset DestinationRule and a VirtualService, as bench/translation.py.
ENTRY = TEMPLATE.replace("namespace: ns-%(ns)d", "namespace: default")


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


async def _both(directory: Path) -> tuple[tuple[float, float], tuple[float, float], int]:
    on_loop = ConfigStore(directory, max_file_bytes=64 << 20)

    async def blocking() -> None:
        on_loop.load_all()

    threaded_store = ConfigStore(directory, max_file_bytes=64 << 20)
    watcher = ConfigWatcher(threaded_store, lambda _: None)
    before = await _measure(blocking)
    after = await _measure(watcher.load)
    return before, after, len(threaded_store.snapshot.resources)


def _one_more(directory: Path, count: int, edits: int = 5) -> float:
    """Median time for the store to take in one more file (the work of a config edit
    before translation), after a full load."""
    store = ConfigStore(directory, max_file_bytes=64 << 20)
    store.load_all()
    times = []
    for k in range(edits):
        path = directory / f"more-{k}.yaml"
        path.write_text(ENTRY % {"i": count + k})
        started = time.perf_counter()
        store.update([path])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _row(what: str, size_mb: float, result) -> str:
    (took_loop, stall_loop), (took, stall), resources = result
    return (
        f"{what:>22} {size_mb:8.1f} {resources:10d} {took:9.2f} {size_mb / took:8.2f}"
        f" {stall_loop * 1000:14.0f} {stall * 1000:14.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="1000,5000")
    parser.add_argument("--large-mb", type=float, default=4.0)
    args = parser.parse_args()
    print(
        f"{'input':>22} {'MB':>8} {'resources':>10} {'load s':>9} {'MB/s':>8}"
        f" {'stall ms, loop':>14} {'stall ms, now':>14}"
    )
    for count in (int(n) for n in args.files.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            for i in range(count):
                (directory / f"svc-{i}.yaml").write_text(ENTRY % {"i": i})
            size = sum(p.stat().st_size for p in directory.iterdir()) / 1e6
            print(_row(f"{count} files", size, asyncio.run(_both(directory))), flush=True)
            print(f"{'':>22} one more file: {_one_more(directory, count):.0f} ms", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        one = ENTRY % {"i": 0}
        repeat = int(args.large_mb * 1e6 / len(one)) + 1
        text = "---\n".join(ENTRY % {"i": i} for i in range(repeat))
        (directory / "large.yaml").write_text(text)
        size = len(text) / 1e6
        print(_row("one large file", size, asyncio.run(_both(directory))), flush=True)


if __name__ == "__main__":
    main()
