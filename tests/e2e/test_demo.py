"""`xds-server demo`, the README's install-and-run command, end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from xds_server.launcher import free_port, http_get

pytestmark = pytest.mark.e2e


def test_demo_starts_routes_and_stops_cleanly(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "xds_server", "demo", "--dir", "dm", "--xds-port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "The mesh is up" in text, text
        sidecar = http_get("http://127.0.10.1:15001/", headers={"Host": "reviews"})
        assert sidecar[0] == 200 and '"service": "reviews"' in sidecar[1]
        gateway = http_get("http://127.0.10.5:8080/reviews")
        assert gateway[0] == 200 and '"service": "reviews"' in gateway[1]
        assert (tmp_path / "dm" / "gateway.yaml").is_file()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rest = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            rest = process.communicate()[0]
    assert process.returncode == 0, "".join(lines) + rest
    assert "stopped." in rest
    assert http_get("http://127.0.10.1:15000/ready", timeout=1)[0] == 0  # Envoys are gone
