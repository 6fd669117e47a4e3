"""A local mesh of pods: each workload in a network namespace of its own, with its
traffic captured as Istio captures a pod's, without Docker or Kubernetes.

A hub namespace holds a bridge (the pods' network, 198.18.0.0/24, the test range) and the
control plane; each pod joins the bridge at its own address and runs its app on its real
port (every reviews version on 9080) as uid 1000 (root if that uid cannot run it), the
capture rules of `xds-server
iptables` (istio-init's), and its Envoy as uid 1337, the rules' exception, in REDIRECT
mode. A gateway is a pod without capture. Every namespace carries the run's prefix and is
removed by `stop()`. Needs root (see netns.available).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xds_server import tokens
from xds_server.bootstrap import BootstrapOptions, render
from xds_server.ca import CertificateAuthority
from xds_server.envoy_binary import find_envoy
from xds_server.launcher import die_with_parent, serve_command, stop_processes
from xds_server.netns import Namespace, add_bridge, join_bridge

APP_UID, PROXY_UID = 1000, 1337
NETWORK = "198.18.0"  # the pods' /24, on the hub's bridge
HUB_ADDRESS = f"{NETWORK}.1"
FIRST_POD = 10  # pods get NETWORK.10, .11, ...
XDS_PORT, XDS_TLS_PORT, DEBUG_PORT, ADMIN_PORT = 15010, 15012, 15014, 15000


def as_user(uid: int, argv: Sequence[str]) -> list[str]:
    """`argv` run as `uid` (its group too, no supplementary groups)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


def dies_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` killed when its parent dies. die_with_parent does that for the process we
    start, but the kernel forgets it when a process changes its uid (setpriv), and `ip
    netns exec` runs the command as a child of its own: so the last process in the
    chain asks for it again."""
    if argv and argv[0] == "setpriv":
        return ["setpriv", "--pdeathsig", "KILL", *argv[1:]]
    return ["setpriv", "--pdeathsig", "KILL", *argv]


def _runs_as(uid: int, path: str) -> bool:
    """Whether `uid` may execute `path` (every directory above it included)."""
    check = subprocess.run(as_user(uid, ["test", "-x", path]), check=False, timeout=10)
    return check.returncode == 0


@dataclass
class Pod:
    """One workload's network namespace, at `address` on the bridge."""

    name: str
    namespace: Namespace
    address: str
    captured: bool

    def get(self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0):
        """(status, body) of GET `url` sent from inside the pod (as root: captured like
        the app's own requests, since only uid 1337 is let through)."""

        def fetch() -> tuple[int, str]:
            request = urllib.request.Request(url, headers=headers or {})
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            try:
                with opener.open(request, timeout=timeout) as response:
                    return response.status, response.read().decode(errors="replace")
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode(errors="replace")
            except OSError as exc:
                return 0, str(exc)

        return self.namespace.call(fetch, timeout=timeout + 5)


@dataclass
class PodMesh:
    """The hub with the control plane, and pods added with add_pod."""

    config_dir: Path
    work_dir: Path
    prefix: str  # of every namespace's name
    server_args: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    namespaces: list[Namespace] = field(default_factory=list)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    _copies: list[Path] = field(default_factory=list)

    # ---- building -----------------------------------------------------------------------

    def start_hub(self) -> None:
        """The bridge and the control plane, serving `config_dir` on the hub's address."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.hub = self.namespace("hub")
        add_bridge(self.hub, HUB_ADDRESS)
        # The server's root and token key, made before it starts: pods read them at once.
        self.root_pem()
        self._token_key  # noqa: B018 (made now)
        # xDS on the bridge for the pods; the debug API on the hub's own loopback, where
        # it needs no admin token (ip netns exec <hub> curl ...).
        listen = ["--xds-address", HUB_ADDRESS, "--debug-address", "127.0.0.1"]
        command = serve_command(
            self.config_dir, self.work_dir, self.log_level, listen, self.server_args
        )
        self.spawn(self.hub, "xds-server", command)

    def root_pem(self) -> str:
        """The mesh root of the hub's server (made here first, as serve would)."""
        return self._root

    @functools.cached_property
    def _root(self) -> str:  # read once: every pod with a token wants it
        return CertificateAuthority.load_or_create(self.work_dir / "state" / "ca").root_pem.decode()

    @functools.cached_property
    def _token_key(self) -> bytes:
        return tokens.load_or_create_key(self.work_dir / "state")

    def token(self, namespace: str, service_account: str) -> str:
        """A token for the workload, signed with the hub server's key (`xds-server token`)."""
        return tokens.issue(self._token_key, namespace, service_account, 24 * 3600)

    def namespace(self, suffix: str, nameserver: str | None = None) -> Namespace:
        namespace = Namespace.create(f"{self.prefix}-{suffix}", nameserver)
        self.namespaces.append(namespace)
        return namespace

    def next_address(self) -> str:
        return f"{NETWORK}.{FIRST_POD + len(self.pods)}"

    def add_pod(
        self,
        name: str,
        labels: dict[str, str],
        app_ports: Sequence[int] = (),
        app: Sequence[str] | None = None,
        *,
        namespace: str = "default",
        service_account: str | None = None,
        gateway: bool = False,
        nameserver: str | None = None,
        capture_args: Sequence[str] = ("--redirect-dns", "--capture-all-dns"),
        token: str = "",
    ) -> Pod:
        """A pod on the bridge: `app` (an argv) as uid 1000, the capture rules (not for a
        gateway) and the sidecar, its bootstrap made from `labels` and `app_ports`."""
        address = self.next_address()
        netns = self.namespace(name, nameserver)
        join_bridge(netns, address, self.hub, HUB_ADDRESS)
        options = BootstrapOptions(
            node_id=name,
            namespace=namespace,
            labels=labels,
            service_account=service_account or labels.get("app", name),
            app_ports=list(app_ports),
            # With a token, xDS over TLS, verified with the root (inline: uid 1337 may not
            # read files under the work directory).
            xds_address=f"{HUB_ADDRESS}:{XDS_TLS_PORT if token else XDS_PORT}",
            xds_root_pem=self.root_pem() if token else "",
            admin_address="0.0.0.0",
            admin_port=ADMIN_PORT,
            ip=address,
            bind_address="0.0.0.0",
            outbound_address="0.0.0.0" if gateway else "127.0.0.1",
            role="gateway" if gateway else "sidecar",
            interception_mode="NONE" if gateway else "REDIRECT",
            token=token,  # xds-server token: the sidecar holds a certificate, speaks mTLS
        )
        bootstrap = render(options)
        (self.work_dir / f"{name}.yaml").write_text(bootstrap)  # to read; Envoy gets it inline
        if not gateway:
            netns.run(sys.executable, "-m", "xds_server", "iptables", "--apply", *capture_args)
        if app:
            self.spawn(netns, f"{name}-app", as_user(APP_UID, app) if self.apps_as_user else app)
        # Inline: uid 1337 may not be able to read files under the work directory.
        envoy = [self.envoy, "--config-yaml", bootstrap, "--disable-hot-restart"]
        envoy += ["--concurrency", "1", "--drain-time-s", "1", "-l", "warning"]
        self.spawn(netns, name, as_user(PROXY_UID, envoy))
        pod = self.pods[name] = Pod(name, netns, address, captured=not gateway)
        return pod

    def spawn(self, namespace: Namespace, name: str, argv: Sequence[str]) -> None:
        """A process in `namespace`, its output in work_dir/NAME.out; it dies with us."""
        with open(self.work_dir / f"{name}.out", "wb") as log:
            self.processes[name] = subprocess.Popen(
                namespace.argv(*dies_with_parent(argv)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @functools.cached_property
    def envoy(self) -> str:
        """The Envoy binary, where uid 1337 can run it: a copy in a directory of the run's
        when the installed one is out of its reach (a venv in a home directory that only
        its owner may enter)."""
        installed = find_envoy()
        if _runs_as(PROXY_UID, installed):
            return installed
        directory = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-envoy-"))
        directory.chmod(0o755)
        self._copies.append(directory)
        copy = directory / "envoy"
        shutil.copy2(installed, copy)
        return str(copy)

    @functools.cached_property
    def apps_as_user(self) -> bool:
        """Whether apps can run as uid 1000 (this Python and this package within its
        reach); if not, they run as root, which the rules capture all the same."""
        probe = as_user(APP_UID, [sys.executable, "-c", "import xds_server.sample_app"])
        done = subprocess.run(probe, capture_output=True, check=False, timeout=30)
        return done.returncode == 0

    # ---- observing ----------------------------------------------------------------------

    @property
    def debug_url(self) -> str:
        """The control plane's debug API, as seen from inside the hub namespace."""
        return f"http://127.0.0.1:{DEBUG_PORT}"

    def hub_get(self, path: str) -> tuple[int, str]:
        """GET `path` of the control plane's debug HTTP, from the hub."""
        return Pod("hub", self.hub, HUB_ADDRESS, False).get(self.debug_url + path)

    def envoy_stats(self, pod: str) -> dict[str, int]:
        status, body = self.pods[pod].get(f"http://127.0.0.1:{ADMIN_PORT}/stats?format=json")
        if status != 200:
            raise RuntimeError(f"{pod}'s Envoy admin: {status} {body[:200]}")
        stats = json.loads(body)["stats"]
        return {s["name"]: s.get("value", 0) for s in stats if "name" in s}

    def dead(self) -> list[str]:
        """Processes that exited, with the end of their output."""
        found = []
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.work_dir / f"{name}.out").read_text(errors="replace")[-1500:]
                found.append(f"{name} exited with {process.returncode}:\n{tail}")
        return found

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """check()'s first true value, within `timeout`; an exited process fails it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            dead = self.dead()
            if dead:
                raise RuntimeError(f"while waiting for {what}: {dead[0]}")
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every pod's Envoy LIVE with its config ACKed (the server's /debug/syncz)."""
        for pod in self.pods.values():
            self.wait_for(
                lambda p=pod: p.get(f"http://127.0.0.1:{ADMIN_PORT}/ready")[0] == 200,
                timeout,
                f"Envoy in pod {pod.name}",
            )

        def synced() -> bool:
            status, body = self.hub_get("/debug/syncz")
            if status != 200:
                return False
            proxies = {p["proxy"]: p for p in json.loads(body)["proxies"]}
            return all(
                name in proxies
                and proxies[name]["types"]
                and all(t["status"] == "SYNCED" for t in proxies[name]["types"].values())
                for name in self.pods
            )

        self.wait_for(synced, timeout, "every sidecar to ACK its config")

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}"
            for log in sorted(self.work_dir.glob("*.out"))
        )

    # ---- stopping -----------------------------------------------------------------------

    def stop(self) -> None:
        """End every process, then remove every namespace (and the bridge with the hub)."""
        stop_processes(self.processes.values())
        self.processes.clear()
        for namespace in reversed(self.namespaces):
            namespace.delete()
        self.namespaces.clear()
        for directory in self._copies:
            shutil.rmtree(directory, ignore_errors=True)
