"""Helpers for the tests that run in network namespaces (see xds_server/netns.py): skip
or fail when namespaces cannot be made, and run tests/capture_probe.py inside one as a
given uid (the app's, or the sidecar's 1337, which the capture rules let through)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xds_server.netns import Namespace, available
from xds_server.pods import as_user

ROOT = Path(__file__).resolve().parents[1]


def need_namespaces() -> None:
    """Skip without namespaces or iptables; fail instead when XDS_TEST_REQUIRE_NETNS is
    set (as .ci/run sets it), so that a machine that cannot run them does not pass."""
    why = available() or (None if shutil.which("iptables-restore") else "iptables is missing")
    if why is None:
        return
    if os.environ.get("XDS_TEST_REQUIRE_NETNS"):
        pytest.fail(f"network namespaces are required here: {why}")
    pytest.skip(why)


def probe(namespace: Namespace, uid: int, *args: str) -> str:
    """What `python -m tests.capture_probe ARGS` prints, run in `namespace` as `uid`."""
    done = subprocess.run(
        namespace.argv(*as_user(uid, [sys.executable, "-m", "tests.capture_probe", *args])),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=ROOT,
    )
    return done.stdout.strip()
