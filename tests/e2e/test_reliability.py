"""Reliability through real Envoy under steady load: restarts of the server, edits in the
wrong order, files swapped as users swap them, writes in progress, inputs no one writes
on purpose, and a push Envoy rejects. Failed requests are counted, never timed.

This module runs its own small mesh (a caller, reviews v1/v2/v3), because it kills the
server. Its server skips the RE2 program-size check (XDS_SERVER_UNSAFE_SKIP_CHECKS) so
that a test can make Envoy reject a push, and refuses files over 1 MB.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import XDS_APIS
from tests.helpers import plain_service_yaml
from tests.helpers import routes_to as vs
from tests.helpers import subsets_rule as dr
from xds_server.launcher import OUTBOUND_PORT, LocalMesh, Workload, http_get, wait_until

pytestmark = pytest.mark.e2e

MAX_FILE_BYTES = 1_000_000


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Cluster:
    """The running mesh, with waits on what the server holds in force."""

    def __init__(self, local: LocalMesh) -> None:
        self.local = local
        self.dir = local.config_dir

    def path(self, name: str) -> Path:
        return self.dir / name

    def configz(self) -> dict:
        return self.local.debug_json("/debug/configz")

    def wait_in_force(self, files: dict[str, str | None], timeout: float = 20) -> None:
        """Wait until these files (name -> text, None: gone) are the versions in force
        and every proxy ACKed the configuration they make."""
        wanted = {str(self.path(n)): digest(t) if t is not None else None for n, t in files.items()}
        self.local.wait_config_applied(wanted, timeout)

    def diagnose(self) -> str:
        """What the server says it sent the caller and what the caller's Envoy holds."""
        syncz = self.local.debug_json("/debug/syncz")
        caller = next(p for p in syncz["proxies"] if p["proxy"] == "caller")
        status, body = http_get(
            f"{self.local.admin_url('caller')}/config_dump?resource=dynamic_route_configs"
        )
        routes = json.loads(body).get("configs", []) if status == 200 else body
        reviews = [
            vh.get("routes")
            for rc in routes
            for vh in rc.get("route_config", {}).get("virtual_hosts", [])
            if vh.get("name", "").startswith("reviews.default")
        ]
        return json.dumps(
            {
                "syncz": caller,
                "envoy_versions": [r.get("version_info") for r in routes],
                "reviews": reviews,
            }
        )[:6000]

    def apply(self, name: str, text: str) -> None:
        self.path(name).write_text(text)
        self.wait_in_force({name: text})

    def issues(self, name: str) -> list[dict]:
        return [i for i in self.configz()["issues"] if i["file"] == str(self.path(name))]

    def wait_issue(self, name: str, words: str, timeout: float = 20) -> dict:
        def found():
            return next((i for i in self.issues(name) if words in i["message"]), None)

        return wait_until(found, timeout, f"an issue about {words!r} in {name}")

    def served(self, count: int = 30, headers: dict | None = None) -> collections.Counter:
        ip = self.local.workload("caller").ip
        seen: collections.Counter = collections.Counter()
        for _ in range(count):
            conn = http.client.HTTPConnection(ip, OUTBOUND_PORT, timeout=10)
            try:
                conn.request("GET", "/", headers={"Host": "reviews", **(headers or {})})
                response = conn.getresponse()
                response.read()
                seen[response.getheader("x-served-by") or str(response.status)] += 1
            finally:
                conn.close()
        return seen


class Load:
    """Steady requests (a new connection each) through the caller's sidecar; every
    non-200 answer and every connection error counts as a failure."""

    def __init__(self, cluster: Cluster, rate: float = 100, limit: float = 180) -> None:
        self.ip = cluster.local.workload("caller").ip
        self.interval, self.limit = 1 / rate, limit
        self.served: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            conn = http.client.HTTPConnection(self.ip, OUTBOUND_PORT, timeout=10)
            try:
                conn.request("GET", "/", headers={"Host": "reviews"})
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    self.served[response.getheader("x-served-by")] += 1
                else:
                    self.failures.append(f"{response.status} {body[:100]!r}")
            except OSError as exc:
                self.failures.append(repr(exc))
            finally:
                conn.close()
            self._stop.wait(self.interval)

    @property
    def total(self) -> int:
        return sum(self.served.values()) + len(self.failures)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture(scope="module", params=XDS_APIS)
def cluster(tmp_path_factory, request) -> Cluster:
    root = tmp_path_factory.mktemp(f"reliability-{request.param}")
    config = root / "config"
    config.mkdir()
    (config / "services.yaml").write_text(plain_service_yaml("reviews", "ratings"))
    (config / "dr.yaml").write_text(dr("v1", "v2", "v3"))
    (config / "vs.yaml").write_text(vs("v1"))
    workloads = [Workload("caller", "caller", app_port=None)]
    workloads += [Workload(f"reviews-{v}", "reviews", v) for v in ("v1", "v2", "v3")]
    local = LocalMesh(
        config,
        workloads,
        root / "work",
        server_args=["--max-file-bytes", str(MAX_FILE_BYTES), "--settle-ms", "1000"],
        server_env={"XDS_SERVER_UNSAFE_SKIP_CHECKS": "re2-program-size"},
        xds_api=request.param,
    )
    with local:
        cluster = Cluster(local)
        cluster.wait_in_force({"vs.yaml": vs("v1")})
        yield cluster


@pytest.fixture
def reset(cluster: Cluster):
    """Each test starts from: DR v1..v3, all traffic to v1, no other file."""
    yield cluster
    keep = {"services.yaml", "dr.yaml", "vs.yaml"}
    for path in list(cluster.dir.iterdir()):
        if path.name not in keep:
            path.unlink()
    cluster.path("services.yaml").write_text(plain_service_yaml("reviews", "ratings"))
    cluster.path("dr.yaml").write_text(dr("v1", "v2", "v3"))
    cluster.path("vs.yaml").write_text(vs("v1"))
    cluster.wait_in_force({"dr.yaml": dr("v1", "v2", "v3"), "vs.yaml": vs("v1")})


def test_server_restarts_fail_no_request(reset: Cluster):
    cluster = reset
    cluster.apply("vs.yaml", vs("v1", "v2", "v3"))  # every subset in use
    with Load(cluster) as load:
        for _ in range(4):
            time.sleep(0.5)
            cluster.local.kill_server()
            cluster.local.start_server()
            wait_until(cluster.local.all_synced, 30, "every proxy back and in sync")
        time.sleep(0.5)
    assert load.failures == [], f"{len(load.failures)} of {load.total}: {load.failures[:5]}"
    assert set(load.served) == {"reviews-v1", "reviews-v2", "reviews-v3"}
    assert load.total > 200


def test_edits_in_the_wrong_order_fail_no_request(reset: Cluster):
    cluster = reset
    cluster.apply("dr.yaml", dr("v1", "v2"))
    with Load(cluster) as load:
        # The route to v3 before the rule defines v3: held back, v1 keeps serving.
        cluster.path("vs.yaml").write_text(vs("v3"))
        cluster.wait_issue("vs.yaml", "held back")
        time.sleep(0.5)
        cluster.apply("dr.yaml", dr("v1", "v2", "v3"))
        cluster.wait_in_force({"vs.yaml": vs("v3")})
        time.sleep(0.5)
        # The rule drops v3 while the route still uses it: held back until the route moves.
        cluster.path("dr.yaml").write_text(dr("v1", "v2"))
        cluster.wait_issue("dr.yaml", "held back")
        time.sleep(0.5)
        cluster.apply("vs.yaml", vs("v2"))
        cluster.wait_in_force({"dr.yaml": dr("v1", "v2")})
        time.sleep(0.5)
    assert load.failures == [], f"{len(load.failures)} of {load.total}: {load.failures[:5]}"
    assert load.served["reviews-v3"] > 0 and load.total > 100
    assert set(cluster.served()) == {"reviews-v2"}


def test_swapping_files_as_users_do_ends_with_the_right_routing(reset: Cluster):
    cluster = reset
    # rm + cp: one sample replaced by another that defines the same VirtualService.
    cluster.path("vs.yaml").unlink()
    cluster.path("sample.yaml").write_text(vs("v2"))
    cluster.wait_in_force({"vs.yaml": None, "sample.yaml": vs("v2")})
    assert set(cluster.served()) == {"reviews-v2"}
    # mv
    os.rename(cluster.path("sample.yaml"), cluster.path("renamed.yaml"))
    cluster.wait_in_force({"sample.yaml": None, "renamed.yaml": vs("v2")})
    assert set(cluster.served()) == {"reviews-v2"}
    # Layering as with kubectl apply: the newest definition wins, and removing it restores
    # the one beneath.
    cluster.path("overlay.yaml").write_text(vs("v3"))
    cluster.wait_in_force({"overlay.yaml": vs("v3")})
    assert set(cluster.served()) == {"reviews-v3"}
    assert any("also defined" in i["message"] for i in cluster.issues("renamed.yaml"))
    cluster.path("overlay.yaml").unlink()
    cluster.wait_in_force({"overlay.yaml": None})
    wait_until(lambda: set(cluster.served(5)) == {"reviews-v2"}, 10, "v2 again")
    cluster.path("renamed.yaml").rename(cluster.path("vs.yaml"))
    cluster.wait_in_force({"renamed.yaml": None, "vs.yaml": vs("v2")})


def test_truncate_then_write_fails_no_request(reset: Cluster):
    cluster = reset
    with Load(cluster) as load:
        for names in (("reviews", "ratings"), ("reviews", "ratings", "details")) * 2:
            text = plain_service_yaml(*names)
            with open(cluster.path("services.yaml"), "w") as out:  # `generate > services.yaml`
                out.flush()
                time.sleep(0.2)
                out.write(text)
            cluster.wait_in_force({"services.yaml": text})
            time.sleep(0.3)
    assert load.failures == [], f"{len(load.failures)} of {load.total}: {load.failures[:5]}"
    assert load.total > 100


def _alias_bomb() -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        text += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
    return text


BAD_INPUTS = {
    "scalar-metadata": ("apiVersion: v1\nkind: Service\nmetadata: 1\nspec: {}\n", "mapping"),
    "configmap-data-list": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
        "data: [1, 2]\n",
        "mapping",
    ),
    "deep-nesting": ("a: " + "[" * 600 + "]" * 600 + "\n", "nest"),
    "alias-bomb": (_alias_bomb(), "aliases"),
    "oversized": ("# " + "x" * (MAX_FILE_BYTES + 10) + "\n", "limit"),
    "not-utf8": (b"kind: \xff\xfe\n", "UTF-8"),
    "dev-zero": (Path("/dev/zero"), "character device"),
    "fifo": (None, "FIFO"),
    "unknown-subset-route": (vs("v9", name="reviews-9", host="ratings"), "subset"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_reported_and_the_next_good_edit_applies(reset: Cluster, case: str):
    cluster = reset
    content, words = BAD_INPUTS[case]
    path = cluster.path(f"bad-{case}.yaml")
    if content is None:
        os.mkfifo(path)
    elif isinstance(content, Path):
        os.symlink(content, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    issue = cluster.wait_issue(path.name, words)
    assert issue["severity"] == "error" and issue["line"] >= 1
    assert http_get(f"{cluster.local.debug_url}/healthz")[0] == 200
    assert set(cluster.served(10)) == {"reviews-v1"}  # the last good config serves
    cluster.apply("vs.yaml", vs("v2"))  # and the next good edit applies
    assert set(cluster.served(10)) == {"reviews-v2"}


def test_thousands_of_files_at_once_load_while_the_server_answers(reset: Cluster):
    cluster = reset
    bulk = cluster.dir / "bulk"
    bulk.mkdir()
    for i in range(2000):
        (bulk / f"svc-{i}.yaml").write_text(plain_service_yaml(f"bulk-{i}"))
    answered = 0
    while len(cluster.configz()["resources"]) < 2004:  # the server answers while it loads
        assert http_get(f"{cluster.local.debug_url}/healthz", timeout=10)[0] == 200
        answered += 1
        assert answered < 600, "bulk files never loaded"
        time.sleep(0.1)
    cluster.apply("vs.yaml", vs("v3"))
    assert set(cluster.served(10)) == {"reviews-v3"}, cluster.diagnose()
    for path in bulk.iterdir():
        path.unlink()
    bulk.rmdir()
    wait_until(lambda: len(cluster.configz()["resources"]) == 4, 60, "bulk files dropped")


def test_a_push_envoy_rejects_is_rolled_back_and_other_edits_still_arrive(reset: Cluster):
    cluster = reset
    # RE2 refuses this program size in Envoy; the server's check is off in this mesh.
    bad = (
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n"
        "metadata: {name: ratings-regex}\nspec:\n  hosts: [ratings]\n  http:\n"
        "  - match: [{uri: {regex: 'a{97}'}}]\n    route: [{destination: {host: ratings}}]\n"
    )
    cluster.path("bad-regex.yaml").write_text(bad)
    time.sleep(0.02)
    cluster.path("vs.yaml").write_text(vs("v2"))  # a valid edit in the meantime
    issue = cluster.wait_issue("bad-regex.yaml", "Envoy rejected", timeout=30)
    assert issue["resource"] == "VirtualService default/ratings-regex" and issue["line"] == 1
    assert "RE2" in issue["message"] or "regex" in issue["message"].lower()
    cluster.wait_in_force({"vs.yaml": vs("v2")}, timeout=30)  # reached every Envoy
    assert set(cluster.served(10)) == {"reviews-v2"}
    syncz = cluster.local.debug_json("/debug/syncz")
    assert any(str(cluster.path("bad-regex.yaml")) in r["rolled_back"] for r in syncz["rollbacks"])
    # Fixing the file clears it: the next version goes to Envoy.
    fixed = bad.replace("a{97}", "a{9}")
    cluster.path("bad-regex.yaml").write_text(fixed)
    cluster.wait_in_force({"bad-regex.yaml": fixed})
    assert not cluster.issues("bad-regex.yaml")
