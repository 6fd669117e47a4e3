"""A real mesh for end-to-end tests: the server, real Envoy sidecars and sample apps."""

from __future__ import annotations

import collections
import hashlib
import http.client
from pathlib import Path

import pytest

from tests.helpers import service_yaml
from xds_server.launcher import LocalMesh, Workload

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed"
SERVICES = ("reviews", "helloworld", "my-app")


def workloads() -> list[Workload]:
    out = [Workload("caller", "caller", app_port=None)]
    out += [Workload(f"reviews-{v}", "reviews", v) for v in ("v1", "v2", "v3")]
    out += [Workload(f"helloworld-{v}", "helloworld", v) for v in ("v1", "v2")]
    out += [Workload(f"my-app-{v}", "my-app", v) for v in ("v1", "v2")]
    return out


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

    def apply_seed(self, filename: str, seed: str) -> int:
        return self.apply(filename, (SEED / seed).read_text())

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


@pytest.fixture(scope="session")
def mesh(tmp_path_factory) -> Mesh:
    root = tmp_path_factory.mktemp("mesh")
    config_dir = root / "config"
    config_dir.mkdir()
    (config_dir / "services.yaml").write_text(service_yaml(*SERVICES))
    local = LocalMesh(config_dir, workloads(), root / "work")
    with local:
        yield Mesh(local)
