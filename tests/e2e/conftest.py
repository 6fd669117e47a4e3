"""A real mesh for end-to-end tests: the server, real Envoy sidecars and sample apps."""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import plain_service_yaml, service_yaml
from xds_server.launcher import APP_PORT, LocalMesh, Workload, http_get, wait_until

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed"
# Services with subsets v1-v3 (the seeds route to them) ...
SERVICES = ("reviews", "helloworld", "my-app", "ratings")
# ... and services whose DestinationRule the seeds bring.
PLAIN_SERVICES = ("my-service", "httpbin", "productpage", "web-svc-v1", "web-svc-v2", "webapp")
# Every test that routes traffic runs against Envoys speaking each xDS variant.
XDS_APIS = ("delta", "sotw")
# The SMI apex service selects only v1: without the TrafficSplit, v1 gets everything.
APEX = {"web-svc": "web-svc-v1"}


def workloads() -> list[Workload]:
    out = [Workload("caller", "caller", app_port=None)]
    out += [Workload(f"reviews-{v}", "reviews", v) for v in ("v1", "v2", "v3")]
    out += [Workload(f"helloworld-{v}", "helloworld", v) for v in ("v1", "v2")]
    out += [Workload(f"my-app-{v}", "my-app", v) for v in ("v1", "v2")]
    out += [Workload("ratings-v1", "ratings", "v1")]
    out += [Workload(f"my-service-{i}", "my-service") for i in "abc"]
    out += [Workload(f"httpbin-{i}", "httpbin") for i in "ab"]
    out += [Workload(f"productpage-{v}", "productpage", v) for v in ("v1", "v2")]
    out += [Workload("web-svc-v1", "web-svc-v1"), Workload("web-svc-v2", "web-svc-v2")]
    out += [Workload("webapp-v1", "webapp")]
    out += [Workload(f"tcp-echo-{v}", "tcp-echo", v) for v in ("v1", "v2")]
    out += [Workload("ingress", "istio-ingressgateway", app_port=None, role="gateway")]
    return out


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str
    seconds: float

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Mesh:
    """The running mesh plus the operations tests need."""

    def __init__(self, local: LocalMesh) -> None:
        self.local = local
        self.config_dir = local.config_dir

    def write(self, filename: str, text: str) -> str:
        path = self.config_dir / filename
        path.write_text(text)
        return str(path)

    def apply(self, filename: str, text: str) -> int:
        """Write a file and wait until every proxy ACKed the config it produces."""
        name = self.write(filename, text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        return self.local.wait_config_applied({name: digest})

    def apply_seed(self, filename: str, seed: str, **replace: str) -> int:
        """Apply a seed example; `replace` swaps literal text (short times for tests)."""
        text = (SEED / seed).read_text()
        for old, new in replace.items():
            assert old in text, old
            text = text.replace(old, new)
        return self.apply(filename, text)

    def remove(self, filename: str) -> None:
        """Delete a file and wait until every proxy ACKed the config without it."""
        path = self.config_dir / filename
        path.unlink(missing_ok=True)

        def gone() -> bool:
            configz = self.local.debug_json("/debug/configz")
            return str(path) not in configz["files"] and (
                configz["pushed_version"] == configz["version"]
            )

        wait_until(gone, 15, f"{filename} to be dropped")
        generation = self.local.debug_json("/debug/configz")["config_generation"]
        wait_until(lambda: self.local.all_synced(generation), 15, "every proxy to ACK")

    def request(
        self,
        host: str,
        path: str = "/",
        headers=None,
        method: str = "GET",
        via: str = "caller",
        port: int | None = None,
    ) -> Reply:
        """One request through workload `via`'s outbound listener (or `port` on its IP)."""
        ip, outbound = self.local.outbound(via)
        conn = http.client.HTTPConnection(ip, port or outbound, timeout=30)
        started = time.monotonic()
        try:
            conn.request(method, path, headers={"Host": host, **(headers or {})})
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
            return Reply(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                body,
                time.monotonic() - started,
            )
        finally:
            conn.close()

    def request_many(self, count: int, host: str, workers: int = 20, **kwargs) -> list[Reply]:
        """`count` requests, `workers` at a time, each on its own connection."""
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda _: self.request(host, **kwargs), range(count)))

    def app(self, workload: str, path: str) -> dict:
        """Call a sample app's /admin endpoint directly (not through any proxy)."""
        ip = self.local.workload(workload).ip
        status, body = http_get(f"http://{ip}:{APP_PORT}{path}", timeout=5)
        assert status == 200, (status, body)
        return json.loads(body)

    def stat(self, workload: str, name: str) -> int:
        """One counter of a workload's Envoy (0 when absent)."""
        stats = self.local.envoy_stats(workload, f"^{name.replace('|', '.')}$")
        return int(next(iter(stats.values()), 0))

    def envoy_config(self, workload: str, resource: str) -> list[dict]:
        """Envoy's own /config_dump for one resource type, e.g. dynamic_active_clusters."""
        status, body = http_get(
            f"{self.local.admin_url(workload)}/config_dump?resource={resource}", timeout=5
        )
        assert status == 200, body
        return json.loads(body).get("configs", [])

    def cluster(self, workload: str, name: str) -> dict:
        for entry in self.envoy_config(workload, "dynamic_active_clusters"):
            if entry["cluster"]["name"] == name:
                return entry["cluster"]
        raise AssertionError(f"{workload} has no cluster {name}")

    def connection(self) -> http.client.HTTPConnection:
        ip, port = self.local.outbound("caller")
        return http.client.HTTPConnection(ip, port, timeout=10)

    def send(self, count: int, host: str, path: str = "/", headers=None) -> collections.Counter:
        """`count` requests from the caller's sidecar; a Counter of (status, served-by)."""
        conn = self.connection()
        seen: collections.Counter = collections.Counter()
        try:
            for _ in range(count):
                conn.request("GET", path, headers={"Host": host, **(headers or {})})
                response = conn.getresponse()
                response.read()
                seen[(response.status, response.getheader("x-served-by"))] += 1
        finally:
            conn.close()
        return seen


@pytest.fixture(scope="session", params=XDS_APIS)
def mesh(tmp_path_factory, request) -> Mesh:
    root = tmp_path_factory.mktemp(f"mesh-{request.param}")
    config_dir = root / "config"
    config_dir.mkdir()
    (config_dir / "services.yaml").write_text(
        service_yaml(*SERVICES)
        + "\n---\n"
        + plain_service_yaml(*PLAIN_SERVICES, *APEX, selectors=APEX)
    )
    local = LocalMesh(config_dir, workloads(), root / "work", xds_api=request.param)
    with local:
        yield Mesh(local)
        rejected = rejections(local)
    # Every config any test produced was accepted by every Envoy: a NACK fails the run.
    assert not rejected, f"Envoy rejected configuration: {rejected}"


def rejections(local: LocalMesh) -> dict[str, str]:
    """NACKs seen by the server and update_rejected counters of every Envoy."""
    found = {}
    for proxy in local.debug_json("/debug/syncz")["proxies"]:
        for name, state in proxy["types"].items():
            if state["nacks"]:
                found[f"{proxy['proxy']} {name}"] = state["nack_error"]
    for workload in local.workloads:
        stats = local.envoy_stats(workload.name, r"update_rejected$")
        for key, value in stats.items():
            if value != "0":
                found[f"{workload.name} {key}"] = value
    return found
