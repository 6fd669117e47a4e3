"""`xds-server demo`, the README's install-and-run command, end to end; and that no process
the launcher starts outlives it."""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from xds_server.launcher import WORKLOAD_PORTS, free_port, http_get, port_free, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.X.Y.Z, /proc"),
]

BROKEN_VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken}
spec:
  http:
  - route:
    - destination: {host: reviews}
"""


def children(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat and stat[0] != "Z" and int(stat[1]) == pid:
                found.add(int(entry.name))
    return found


def _stat(pid: int) -> list[str] | None:
    """State, parent pid, ... of a process; None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if (stat := _stat(pid)) and stat[0] != "Z"}


def kill_all(pids: set[int]) -> None:
    """Cleanup after a failed test: SIGKILL what is left of the processes it started."""
    for pid in alive(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Console:
    """A process's merged output, read by a thread so every wait has a deadline."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process, self.lines = process, []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout}s in:\n{self.text}")

    def rest(self, timeout: float) -> str:
        """Everything until the process closes its output."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


def free_subnet(hosts: int = 5) -> str:
    """A loopback subnet where the demo's addresses are all free."""
    for _ in range(50):
        subnet = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}"
        ips = [f"{subnet}.{i}" for i in range(1, hosts + 1)]
        if all(port_free(ip, port) for ip in ips for port in (*WORKLOAD_PORTS, 8080)):
            return subnet
    raise AssertionError("no free loopback subnet")


def demo_command(port: int, subnet: str) -> list[str]:
    return [sys.executable, "-m", "xds_server", "demo", "--dir", "dm"] + [
        "--xds-port",
        str(port),
        "--debug-port",
        str(free_port()),
        "--subnet",
        subnet,
    ]


def test_demo_routes_shows_config_errors_refuses_a_second_run_and_stops_on_hangup(tmp_path):
    port, subnet = free_port(), free_subnet()
    command = demo_command(port, subnet)
    demo = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    console, started = Console(demo), set()
    try:
        console.wait_for("Press Ctrl-C", timeout=90)
        assert "The mesh is up" in console.text
        started = children(demo.pid)
        assert len(started) == 7, started  # server, apps, 4 sidecars, a gateway
        sidecar = http_get(f"http://{subnet}.1:15001/", headers={"Host": "reviews"})
        assert sidecar[0] == 200 and '"service": "reviews"' in sidecar[1]
        gateway = http_get(f"http://{subnet}.5:8080/reviews")
        assert gateway[0] == 200 and '"service": "reviews"' in gateway[1]
        assert (tmp_path / "dm" / "gateway.yaml").is_file()

        # A config error written now shows on the demo's console, with file and line.
        (tmp_path / "dm" / "broken.yaml").write_text(BROKEN_VS)
        line = console.wait_for("dm/broken.yaml:", timeout=30)
        assert "dm/broken.yaml:4: error: VirtualService default/broken: spec.hosts" in line

        # A second demo on the same addresses says so in one line, and starts nothing.
        second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "Traceback" not in second.stderr and second.stdout == ""
        (message,) = second.stderr.splitlines()
        assert message.startswith(f"error: 127.0.0.1:{port} (xDS)"), message
        assert f"on {subnet}.* are in use (is another demo running?)" in message
        assert "--subnet 127." in message and "--xds-port " in message

        # Closing the terminal (SIGHUP) stops every process, as Ctrl-C does.
        demo.send_signal(signal.SIGHUP)
        demo.wait(timeout=30)
        assert demo.returncode == 0, console.rest(5)
        assert "stopped." in console.rest(5)
        wait_until(lambda: not alive(started), 10, f"children {alive(started)} to exit")
        assert http_get(f"http://{subnet}.1:15000/ready", timeout=1)[0] == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
        kill_all(started)


LAUNCHER = """
import sys, time
from pathlib import Path
from xds_server.launcher import LocalMesh, Workload

root = Path(sys.argv[1])
mesh = LocalMesh(root / "config", [Workload("solo", "solo")], root / "work").start()
print("up", *(p.pid for p in mesh.processes.values()), flush=True)
time.sleep(120)
"""


def test_children_die_with_a_killed_launcher(tmp_path):
    """SIGKILL leaves the launcher no chance to stop anything: PR_SET_PDEATHSIG does."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started: set[int] = set()
    try:
        line = Console(launcher).wait_for("up ", timeout=60)
        started = {int(pid) for pid in line.split()[1:]}
        assert len(started) == 3 and started == children(launcher.pid)  # server, app, Envoy
        launcher.kill()
        launcher.wait(timeout=10)
        wait_until(lambda: not alive(started), 10, f"children {alive(started)} to exit")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        kill_all(started)
