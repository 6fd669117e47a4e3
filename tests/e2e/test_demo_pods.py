"""`xds-server demo --pods`: the demo's workloads as pods with captured traffic, the
commands it prints, and its namespaces gone when it stops, or at the next start when it
was killed."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.e2e.test_demo import Console, alive, children, kill_all
from tests.pods import need_namespaces
from xds_server.demo_pods import PREFIX, _demo_namespaces, clear_leftovers
from xds_server.launcher import wait_until

pytestmark = pytest.mark.e2e
COMMAND = [sys.executable, "-m", "xds_server", "demo", "--pods", "--dir", "dm"]


def _start(cwd) -> tuple[subprocess.Popen, Console]:
    demo = subprocess.Popen(
        COMMAND, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    console = Console(demo)
    console.wait_for("Press Ctrl-C", timeout=120)
    return demo, console


def _printed(console: Console, text: str) -> str:
    """The command the demo printed on the line holding `text`, without its comment."""
    line = next(line for line in console.lines if text in line)
    return line.split("#")[0].strip()


def test_the_pod_demo_routes_captured_traffic_and_cleans_up(tmp_path) -> None:
    need_namespaces()
    if _demo_namespaces():
        pytest.skip(f"a pod demo is running here ({PREFIX}-* namespaces exist)")
    started: set[int] = set()
    demo = None
    try:
        demo, console = _start(tmp_path)
        assert "landed on: v1 " in console.text and ", v2 " in console.text, console.text
        started = children(demo.pid)
        assert len(started) == 9, started  # server, 3 apps, 4 sidecars, a gateway
        for text, version in (
            ("end-user: jason", '"version": "v2"'),
            (":8080/reviews", '"reviews"'),
        ):
            command = _printed(console, text)
            assert command.startswith("ip netns exec xdsdemo-"), command
            done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30)
            assert version in done.stdout, (command, done.stdout, done.stderr)
            # Over mutual TLS: the app sees its caller's identity (sleep, or the gateway).
            assert "URI=spiffe://cluster.local/ns/default/sa/" in done.stdout, done.stdout

        # A second pod demo is refused while this one runs.
        second = subprocess.run(COMMAND, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "another pod demo is running" in second.stderr

        # Killed outright: its processes die with it, its namespaces stay behind ...
        demo.kill()
        demo.wait(timeout=10)
        wait_until(lambda: not alive(started), 10, f"children {alive(started)} to exit")
        assert _demo_namespaces()
        # ... until the next demo removes them, and its own when it stops.
        demo, console = _start(tmp_path)
        started = children(demo.pid)
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=30)
        assert demo.returncode == 0 and "stopped." in console.rest(5)
        assert _demo_namespaces() == []
    finally:
        if demo is not None and demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
        kill_all(started)
        wait_until(lambda: not alive(started), 10, "the demo's processes to exit")
        assert clear_leftovers() is None
