"""The server as the benches run it: `xds-server serve` on a generated mesh (N
services over 10 namespaces), started in its own process and waited for until ready."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from translation import TEMPLATE


def write_mesh(directory: Path, services: int) -> None:
    """Each service a Service, a two-subset DestinationRule and a VirtualService."""
    for i in range(services):
        (directory / f"svc-{i}.yaml").write_text(TEMPLATE % {"i": i, "ns": i % 10})


async def stop_streams(tasks: Sequence, channels: Sequence) -> None:
    """Cancel the simulated proxies' tasks and close their gRPC channels."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def serving(
    config: Path, state: Path, debug: int, listen: Sequence[str], log: str = ""
) -> Iterator[subprocess.Popen]:
    """The server on `config` (its state in `state`, xDS where `listen` says, the debug
    API on `debug`), once /readyz answers (at most 120 s); its log appended to `log`."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xds_server",
            "--log-level",
            os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"),
            "serve",
            *("--config-dir", str(config), "--state-dir", str(state)),
            *listen,
            *("--debug-port", str(debug), "--restart-grace", "0"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab") if log else subprocess.DEVNULL,  # noqa: SIM115
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{debug}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        yield server
    finally:
        server.terminate()
        server.wait(30)
