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

import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import REGISTRY_ONLY_MESH
from tests.pods import need_namespaces, probe
from translators.listeners import auto_address
from xds_server import tokens
from xds_server.netns import join_bridge, run_prefix
from xds_server.pods import APP_UID, HUB_ADDRESS, PROXY_UID, PodMesh

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
V2 = "198.18.0.12"  # pods get 198.18.0.10, .11, ... in the order they are added
OUTSIDE = "198.18.0.50"
VIP, DB_VIP = "198.19.0.10", "198.19.0.20"
OUTSIDE_NAME = "outside.example"
REVIEWS = {"app": "reviews"}
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


class Mesh(PodMesh):
    """The pods above, and probes run in them as the app's uid (or the sidecar's)."""

    def __init__(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="xds-capture-"))
        (work / "mesh").mkdir()
        (work / "mesh" / "reviews.yaml").write_text(MESH)
        super().__init__(work / "mesh", work / "run", run_prefix(), ["--restart-grace", "0"])
        self.work = work

    def start(self) -> None:
        self.token_key = tokens.load_or_create_key(self.work_dir / "state")
        self.start_hub()
        outside = self.namespace("o")
        join_bridge(outside, OUTSIDE, self.hub, HUB_ADDRESS)
        self.spawn(outside, "outside-dns", [*PROBE, "dns", OUTSIDE, f"{OUTSIDE_NAME}={OUTSIDE}"])
        self.spawn(outside, "outside-tcp", [*PROBE, "tcp-server", OUTSIDE, "7000", "outside"])
        sample = [sys.executable, "-m", "xds_server.sample_app"]
        for name, labels, port, app in (
            ("sleep", {"app": "sleep"}, None, None),
            ("reviews-v1", REVIEWS | {"version": "v1"}, 9080, [*sample, "reviews:v1:9080@0.0.0.0"]),
            ("reviews-v2", REVIEWS | {"version": "v2"}, 9080, [*sample, "reviews:v2:9080@0.0.0.0"]),
            ("db", {"app": "db"}, 3306, [*PROBE, "tcp-server", "0.0.0.0", "3306", "db"]),
            ("cache", {"app": "cache"}, 3306, [*PROBE, "tcp-server", "0.0.0.0", "3306", "cache"]),
        ):
            # The rules capture DNS to the pod's nameserver (the outside one). Each
            # sidecar holds a certificate for its app's identity: mutual TLS between pods.
            self.add_pod(
                name,
                labels,
                [port] if port else [],
                app,
                nameserver=OUTSIDE,
                capture_args=["--redirect-dns"],
                token=tokens.issue(self.token_key, "default", labels["app"], 3600),
            )
        # A port of db's that no service declares: captured, then passed through.
        extra = [*PROBE, "tcp-server", "0.0.0.0", str(EXTRA_PORT), "extra"]
        self.spawn(self.pods["db"].namespace, "db-extra", extra)

    def call(self, pod: str, url: str, *headers: str, uid: int = APP_UID) -> tuple[int, dict]:
        answer = probe(self.pods[pod].namespace, uid, "http", url, *headers)
        status, _, body = answer.partition("\n")
        if not status.strip().isdigit():
            return 0, {"error": status}
        try:
            return int(status), json.loads(body)
        except json.JSONDecodeError:
            return int(status), {"body": body}

    def tcp(self, pod: str, host: str, port: int) -> str:
        return probe(self.pods[pod].namespace, APP_UID, "tcp", host, str(port))

    def resolve(self, pod: str, name: str) -> str:
        return probe(self.pods[pod].namespace, APP_UID, "resolve", name)

    def stats(self, pod: str) -> dict[str, int]:
        return self.envoy_stats(pod)

    def apply(self, name: str, text: str) -> None:
        (self.config_dir / name).write_text(text)

    def remove(self, name: str) -> None:
        (self.config_dir / name).unlink(missing_ok=True)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(scope="module")
def mesh():
    need_namespaces()
    mesh = Mesh()
    try:
        mesh.start()
        try:
            mesh.wait_ready()
            mesh.wait_for(
                lambda: mesh.call("sleep", f"http://{VIP}:9080/")[0] == 200, 30, "reviews"
            )
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"the captured mesh never served reviews: {exc}\n{mesh.logs()}")
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
    # Between pods, over mutual TLS: the callee's app sees the caller's identity.
    status, body = mesh.call("sleep", f"http://{VIP}:9080/", "end-user:jason")
    assert "spiffe://cluster.local/ns/default/sa/sleep" in body["headers"].get(
        "x-forwarded-client-cert", ""
    ), body
    assert callee["listener.0.0.0.0_15006.ssl.handshake"] > 0


def test_the_app_port_is_reached_only_through_its_sidecar(mesh) -> None:
    # Even a connection that skips the caller's sidecar (its uid) lands in the callee's.
    status, body = mesh.call("sleep", f"http://{V2}:9080/", uid=PROXY_UID)
    assert status == 200 and body["version"] == "v2", body
    assert "x-request-id" in body["headers"]  # added by the callee's sidecar
    assert body["instance"] == "0.0.0.0:9080" or body["instance"].endswith(":9080")


EXTRA_PORT = 7777
STRICT_DB = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db-strict, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: STRICT}
"""


def test_undeclared_ports_follow_the_workloads_peer_authentication(mesh) -> None:
    """Ports no service declares pass through the sidecar to the app; STRICT holds there
    too (plaintext refused). AuthorizationPolicy guards them as well
    (tests/test_capture_listeners.py); network RBAC decides on a client's first bytes,
    which this server-first probe never sends."""
    db = mesh.pods["db"].address
    assert _eventually(lambda: mesh.tcp("sleep", db, EXTRA_PORT).startswith("extra "))
    mesh.apply("strict.yaml", STRICT_DB)
    try:
        assert _eventually(lambda: not mesh.tcp("sleep", db, EXTRA_PORT).startswith("extra "))
        assert not mesh.tcp("sleep", db, EXTRA_PORT).startswith("extra ")
    finally:
        mesh.remove("strict.yaml")
    assert _eventually(lambda: mesh.tcp("sleep", db, EXTRA_PORT).startswith("extra "))


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


REGISTRY_ONLY = REGISTRY_ONLY_MESH
