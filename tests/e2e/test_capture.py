"""Transparent capture, end to end: pods as network namespaces, the capture rules of
`xds-server iptables`, real Envoys in REDIRECT mode, and an app that calls a service by
its address with no proxy settings.

A hub namespace holds a bridge (198.18.0.1/24) and the control plane; each pod is a
namespace on the bridge with its app (uid 1000) and its sidecar (uid 1337, the rules'
exception), with DNS captured too. reviews has clusterIP 198.19.0.10 and the routes of
seeds 01 and 06; db and cache are TCP services on one port (db at its clusterIP, cache at
the address DNS gives it). A namespace on the bridge that is not in the mesh stands for
the outside world: a server, and the DNS server the client pod's resolv.conf names.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.pods import as_user, need_namespaces, probe
from translators.listeners import auto_address
from xds_server.envoy_binary import find_envoy
from xds_server.netns import Namespace, add_bridge, join_bridge, run_prefix

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
HUB, CLIENT, V1, V2 = "198.18.0.1", "198.18.0.10", "198.18.0.11", "198.18.0.12"
DB, CACHE, OUTSIDE = "198.18.0.13", "198.18.0.14", "198.18.0.50"
VIP, DB_VIP = "198.19.0.10", "198.19.0.20"
OUTSIDE_NAME = "outside.example"
APP_UID, PROXY_UID = 1000, 1337
PROBE = [sys.executable, "-m", "tests.capture_probe"]
MESH = f"""apiVersion: v1
kind: Service
metadata: {{name: reviews}}
spec:
  clusterIP: {VIP}
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ratings}}
spec:
  selector: {{app: ratings}}
  ports: [{{name: http, port: 9080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: {DB_VIP}
  selector: {{app: db}}
  ports: [{{name: tcp, port: 3306}}]
---
apiVersion: v1
kind: Service
metadata: {{name: cache}}
spec:
  selector: {{app: cache}}
  ports: [{{name: tcp, port: 3306}}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 75}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 25}}
"""


class Mesh:
    def __init__(self) -> None:
        self.prefix = run_prefix()
        self.work = Path(tempfile.mkdtemp(prefix="xds-capture-"))
        self.work.chmod(0o755)  # the sidecars (uid 1337) read their bootstraps here
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen] = []
        self.pods: dict[str, Namespace] = {}

    def start(self) -> None:
        hub = self._namespace("h")
        add_bridge(hub, HUB)
        self.hub = hub
        config = self.work / "mesh"
        config.mkdir()
        (config / "reviews.yaml").write_text(MESH)
        self._spawn(
            hub,
            "server",
            [
                sys.executable,
                "-m",
                "xds_server",
                "serve",
                "--config-dir",
                str(config),
                "--xds-address",
                HUB,
                "--debug-address",
                HUB,
                "--state-dir",
                str(self.work / "state"),
                "--restart-grace",
                "0",
            ],
        )
        outside = self._namespace("o")
        join_bridge(outside, OUTSIDE, hub, HUB)
        self._spawn(outside, "outside-dns", [*PROBE, "dns", OUTSIDE, f"{OUTSIDE_NAME}={OUTSIDE}"])
        self._spawn(outside, "outside-tcp", [*PROBE, "tcp-server", OUTSIDE, "7000", "outside"])
        sample = [sys.executable, "-m", "xds_server.sample_app"]
        for name, address, labels, port, app in (
            ("sleep", CLIENT, "app=sleep", None, None),
            (
                "reviews-v1",
                V1,
                "app=reviews,version=v1",
                9080,
                [*sample, "reviews:v1:9080@0.0.0.0"],
            ),
            (
                "reviews-v2",
                V2,
                "app=reviews,version=v2",
                9080,
                [*sample, "reviews:v2:9080@0.0.0.0"],
            ),
            ("db", DB, "app=db", 3306, [*PROBE, "tcp-server", "0.0.0.0", "3306", "db"]),
            ("cache", CACHE, "app=cache", 3306, [*PROBE, "tcp-server", "0.0.0.0", "3306", "cache"]),
        ):
            self._pod(name, address, labels, port, app)

    def _namespace(self, suffix: str, nameserver: str | None = None) -> Namespace:
        namespace = Namespace.create(f"{self.prefix}{suffix}", nameserver)
        self.namespaces.append(namespace)
        return namespace

    def _spawn(self, namespace: Namespace, name: str, argv: list[str]) -> None:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        self.processes.append(
            subprocess.Popen(namespace.argv(*argv), stdout=log, stderr=log, cwd=ROOT)
        )

    def _pod(
        self, name: str, address: str, labels: str, port: int | None, app: list[str] | None
    ) -> None:
        pod = self._namespace(str(len(self.pods)), nameserver=OUTSIDE)
        join_bridge(pod, address, self.hub, HUB)
        bootstrap = self.work / f"{name}.yaml"
        ports = ["--app-port", str(port)] if port else []
        subprocess.run(
            [
                sys.executable,
                "-m",
                "xds_server",
                "bootstrap",
                "--node-id",
                name,
                "--labels",
                labels,
                *ports,
                "--xds-address",
                f"{HUB}:15010",
                "--interception-mode",
                "REDIRECT",
                "--ip",
                address,
                "-o",
                str(bootstrap),
            ],
            check=True,
            timeout=60,
        )
        bootstrap.chmod(0o644)
        pod.run(sys.executable, "-m", "xds_server", "iptables", "--apply", "--redirect-dns")
        if app:
            self._spawn(pod, f"{name}-app", as_user(APP_UID, *app))
        self._spawn(
            pod,
            f"{name}-envoy",
            as_user(
                PROXY_UID,
                find_envoy(),
                "-c",
                str(bootstrap),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ),
        )
        self.pods[name] = pod

    def call(self, pod: str, url: str, *headers: str, uid: int = APP_UID) -> tuple[int, dict]:
        status, _, body = probe(self.pods[pod], uid, "http", url, *headers).partition("\n")
        if not status.strip().isdigit():
            return 0, {"error": status}
        try:
            return int(status), json.loads(body)
        except json.JSONDecodeError:
            return int(status), {"body": body}

    def tcp(self, pod: str, host: str, port: int) -> str:
        return probe(self.pods[pod], APP_UID, "tcp", host, str(port))

    def apply(self, name: str, text: str) -> None:
        (self.work / "mesh" / name).write_text(text)

    def remove(self, name: str) -> None:
        (self.work / "mesh" / name).unlink(missing_ok=True)

    def resolve(self, pod: str, name: str) -> str:
        return probe(self.pods[pod], APP_UID, "resolve", name)

    def stats(self, pod: str) -> dict[str, int]:
        status, body = self.call(pod, "http://127.0.0.1:15000/stats?format=json")
        assert status == 200, body
        return {s["name"]: s.get("value", 0) for s in body["stats"] if "name" in s}

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        for namespace in self.namespaces:
            namespace.delete()
        shutil.rmtree(self.work, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}"
            for log in sorted(self.work.glob("*.log"))
        )


@pytest.fixture(scope="module")
def mesh():
    need_namespaces()
    mesh = Mesh()
    try:
        mesh.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if mesh.call("sleep", f"http://{VIP}:9080/")[0] == 200:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the captured mesh never served reviews:\n" + mesh.logs())
        yield mesh
    finally:
        mesh.stop()


def test_an_app_calls_a_service_by_address_and_gets_the_seeds_routing(mesh) -> None:
    versions = Counter()
    for _ in range(40):
        status, body = mesh.call("sleep", f"http://{VIP}:9080/")
        assert status == 200, body
        versions[body["version"]] += 1
    assert set(versions) == {"v1", "v2"} and versions["v1"] > versions["v2"], versions  # 75/25
    for _ in range(10):
        status, body = mesh.call("sleep", f"http://{VIP}:9080/", "end-user:jason")
        assert (status, body.get("version")) == (200, "v2"), body


def test_mesh_names_resolve_to_the_services_address_in_the_sidecar(mesh) -> None:
    # The app's DNS goes to the sidecar's DNS listener (127.0.0.1:15053, --redirect-dns).
    for name in ("reviews", "reviews.default", "reviews.default.svc.cluster.local"):
        assert mesh.resolve("sleep", name) == VIP, name
    # A Service without a clusterIP gets an address from Istio's auto-allocation range.
    assert mesh.resolve("sleep", "ratings") == auto_address("ratings.default.svc.cluster.local")
    status, body = mesh.call("sleep", "http://reviews:9080/", "end-user:jason")
    assert (status, body.get("version")) == (200, "v2"), body
    assert mesh.stats("sleep")["dns_filter.dns.local_a_record_answers"] > 0


def test_the_request_crosses_15001_and_the_subset_cluster_and_15006(mesh) -> None:
    mesh.call("sleep", f"http://{VIP}:9080/", "end-user:jason")
    caller, callee = mesh.stats("sleep"), mesh.stats("reviews-v2")
    # 0.0.0.0_9080 binds no port: only virtualOutbound (15001) hands connections to it,
    # and Envoy counts a handed-over connection on the listener that takes it.
    assert caller["listener.0.0.0.0_9080.downstream_cx_total"] > 0
    assert (
        caller["cluster.outbound|9080|v2|reviews.default.svc.cluster.local.upstream_rq_total"] > 0
    )
    assert callee["listener.0.0.0.0_15006.downstream_cx_total"] > 0


def test_the_app_port_is_reached_only_through_its_sidecar(mesh) -> None:
    # Even a connection that skips the caller's sidecar (its uid) lands in the callee's.
    status, body = mesh.call("sleep", f"http://{V2}:9080/", uid=PROXY_UID)
    assert status == 200 and body["version"] == "v2", body
    assert "x-request-id" in body["headers"]  # added by the callee's sidecar
    assert body["instance"] == "0.0.0.0:9080" or body["instance"].endswith(":9080")


def _eventually(check, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return False


def test_tcp_services_on_one_port_are_reached_by_name(mesh) -> None:
    # db at its clusterIP, cache at the address DNS made up for it: one port, two services.
    assert _eventually(lambda: mesh.tcp("sleep", "db", 3306).startswith("db ")), mesh.logs()
    assert _eventually(lambda: mesh.tcp("sleep", "cache", 3306).startswith("cache "))
    assert mesh.tcp("sleep", DB_VIP, 3306).startswith("db ")
    caller = mesh.stats("sleep")
    assert caller[f"listener.{DB_VIP}_3306.downstream_cx_total"] > 0
    assert caller["cluster.outbound|3306||cache.default.svc.cluster.local.upstream_cx_total"] > 0
    # On the callee, the connection came in through 15006 to the app's port.
    assert mesh.stats("db")["cluster.inbound|3306||.upstream_cx_total"] > 0


def test_other_names_are_forwarded_and_registry_only_blocks_them(mesh) -> None:
    # Not a mesh name: the sidecar's DNS listener asks the pod's resolver (outside).
    assert mesh.resolve("sleep", OUTSIDE_NAME) == OUTSIDE
    assert mesh.resolve("sleep", "nowhere.example").startswith("error")
    assert mesh.stats("sleep")["dns_filter.dns.external_a_record_answers"] > 0
    # ALLOW_ANY (the default): a host outside the registry passes through.
    assert mesh.tcp("sleep", OUTSIDE_NAME, 7000) == "outside -"
    try:
        mesh.apply("mesh.yaml", REGISTRY_ONLY)
        assert _eventually(lambda: mesh.tcp("sleep", OUTSIDE_NAME, 7000) != "outside -")
        assert mesh.tcp("sleep", OUTSIDE, 7000) != "outside -"
        assert mesh.tcp("sleep", "db", 3306).startswith("db ")  # the mesh still works
        assert mesh.stats("sleep")["cluster.BlackHoleCluster.upstream_cx_none_healthy"] > 0
    finally:
        mesh.remove("mesh.yaml")
    assert _eventually(lambda: mesh.tcp("sleep", OUTSIDE_NAME, 7000) == "outside -")


REGISTRY_ONLY = """apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
"""
