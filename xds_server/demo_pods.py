"""`xds-server demo --pods`: the demo's workloads as pods (network namespaces) whose
traffic is captured, so apps call `http://reviews:9080/` with no proxy settings.

The namespaces are named `xdsdemo-*`; the ones a demo that was killed left behind (no
process runs in them) are removed at the next start, and a demo still running is
refused, so one demo never touches another's.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

from xds_server import netns
from xds_server.pods import ADMIN_PORT, HUB_ADDRESS, PodMesh

PREFIX = "xdsdemo"
GATEWAY_PORT = 8080
REVIEWS_URL = "http://reviews:9080/"


def unavailable() -> str | None:
    """Why pods cannot run here, or None."""
    why = netns.available()
    if why is None and shutil.which("iptables-restore") is None:
        why = "iptables is not installed"
    if why is None and shutil.which("setpriv") is None:
        why = "setpriv (util-linux) is not installed"
    return why


def _demo_namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    names = (line.split()[0] for line in listed.stdout.splitlines() if line.strip())
    return [n for n in names if n.startswith(f"{PREFIX}-")]


def clear_leftovers() -> str | None:
    """Remove the namespaces of a demo that died; the reason it cannot start, if one
    still runs."""
    found = _demo_namespaces()
    for name in found:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        if pids.stdout.strip():
            return (
                f"another pod demo is running (namespace {name} has processes); stop it "
                f"first, or run this one without --pods"
            )
    for name in found:
        netns.Namespace(name).delete()
    return None


class PodDemo(PodMesh):
    """The control plane, sleep, reviews v1/v2/v3 and the ingress gateway, each a pod."""

    def __init__(self, config_dir: Path, work_dir: Path) -> None:
        super().__init__(config_dir, work_dir, PREFIX)

    def __enter__(self) -> PodDemo:
        try:
            self.start_hub()
            # Each with its workload's token: xDS over TLS, certificates, mutual TLS.
            self.add_pod("sleep", {"app": "sleep"}, token=self.token("default", "sleep"))
            for version in ("v1", "v2", "v3"):
                app = [sys.executable, "-m", "xds_server.sample_app"]
                self.add_pod(
                    f"reviews-{version}",
                    {"app": "reviews", "version": version},
                    [9080],
                    [*app, f"reviews:{version}:9080@0.0.0.0"],
                    service_account="reviews",
                    token=self.token("default", "reviews"),
                )
            # Gateways select it by its label istio=ingressgateway (demo_mesh/gateway.yaml).
            self.add_pod(
                "ingressgateway",
                {"app": "istio-ingressgateway", "istio": "ingressgateway"},
                gateway=True,
                token=self.token("default", "istio-ingressgateway"),
            )
            self.wait_ready(timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sample(self, count: int = 100) -> collections.Counter:
        """Where `count` requests from sleep to reviews landed (by version)."""
        seen: collections.Counter = collections.Counter()
        sleep = self.pods["sleep"]
        for _ in range(count):
            status, body = sleep.get(REVIEWS_URL)
            seen[json.loads(body)["version"] if status == 200 else str(status)] += 1
        return seen

    def instructions(self, directory: Path) -> str:
        sleep, hub = self.pods["sleep"].namespace.name, self.hub.name
        gateway = self.pods["ingressgateway"].address
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.sample().items()))
        return f"""
The mesh is up, each workload in a pod (network namespace) on a bridge ({HUB_ADDRESS}/24),
its traffic captured by iptables as istio-init sets it. 100 requests from sleep to
{REVIEWS_URL} landed on: {counts}

An app in the sleep pod needs no proxy settings (run as root; add `sudo` if you are not):
  ip netns exec {sleep} curl -s {REVIEWS_URL}                       # v1 75%, v2 25%
  ip netns exec {sleep} curl -s -H 'end-user: jason' {REVIEWS_URL}  # always v2
  ip netns exec {sleep} curl -s http://127.0.0.1:{ADMIN_PORT}/stats | grep 'cx_total: [1-9]'

Through the ingress gateway, from the hub:
  ip netns exec {hub} curl -s http://{gateway}:{GATEWAY_PORT}/reviews

Edit {directory}/reviews-virtualservice.yaml and save: routing changes at once.
  ip netns exec {hub} curl -s {self.debug_url}/debug/syncz       # what each Envoy ACKed
Logs: {self.work_dir}/   Press Ctrl-C to stop (the namespaces go with it)."""
