"""Run a mesh on one machine: the server, sample apps and real Envoy sidecars as processes.

Each workload gets its own loopback address (127.X.Y.N), so every sidecar and app uses
Istio's usual ports (admin 15000, outbound 15001, inbound 15006, app 9080) as if it were a
pod. The demo and the end-to-end tests both use this launcher. Every wait is bounded and
`stop()` ends every process it started.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xds_server import tokens
from xds_server.bootstrap import BootstrapOptions, render, stats_matcher_of
from xds_server.envoy_binary import find_envoy

ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, APP_PORT = 15000, 15001, 15006, 9080
STATS_PORT = 15090  # Istio's Prometheus port (xds_server.prometheus_listener)
WORKLOAD_PORTS = {
    ADMIN_PORT: "Envoy admin",
    STATS_PORT: "Prometheus",
    OUTBOUND_PORT: "outbound",
    INBOUND_PORT: "inbound",
    APP_PORT: "app",
}
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class PortsInUse(RuntimeError):
    """Addresses the mesh needs are taken. `taken` holds (setting, "host:port", what), the
    setting being the LocalMesh field to change: "xds_port", "debug_port" or "subnet"."""

    def __init__(self, taken: list[tuple[str, str, str]]) -> None:
        self.taken = taken
        shown = ", ".join(f"{address} ({what})" for _, address, what in taken[:3])
        more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
        super().__init__(f"in use: {shown}{more}")


_prctl: Any = None


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel SIGKILL the child when this process dies, even by
    SIGKILL (PR_SET_PDEATHSIG, Linux only; None elsewhere).

    The signal comes when the *thread* that started the child exits: start children from a
    thread that lives as long as they should (the main thread, in the demo and the tests)."""
    global _prctl
    if not sys.platform.startswith("linux"):
        return None
    if _prctl is None:
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            return None
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        prctl.restype = ctypes.c_int
        _prctl = prctl
    prctl, parent = _prctl, os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def serve_command(
    config_dir: Path,
    work_dir: Path,
    log_level: str,
    listen: Sequence[str],
    more: Sequence[str] = (),
) -> list[str]:
    """`xds-server serve` for a local mesh: `listen` says where; remembered workloads stay
    with the run (work_dir/state), out of the user's config directory."""
    return [
        sys.executable,
        "-m",
        "xds_server",
        "--log-level",
        log_level,
        "serve",
        "--config-dir",
        str(config_dir),
        *listen,
        "--state-dir",
        str(work_dir / "state"),
        *more,
    ]


def stop_processes(processes: Iterable[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM each process, give them `grace` seconds in all, then SIGKILL the rest."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass
class Workload:
    """A sidecar, and the sample app behind it when `app_port` is set."""

    name: str  # node id
    app: str  # the `app` label and the sample app's service name
    version: str = "v1"
    namespace: str = "default"
    app_port: int | None = APP_PORT
    ip: str = ""  # filled in by the launcher
    role: str = "sidecar"  # "gateway": an ingress proxy, no app behind it

    @property
    def labels(self) -> dict[str, str]:
        if self.role == "gateway":
            return {"app": self.app, "istio": "ingressgateway"}
        return {"app": self.app, "version": self.version}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (nothing listening or bound there)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError):
        return True  # not an address we can check; the server reports it
    with socket.socket(family) as sock:
        # As servers bind: a port held only by TIME_WAIT connections counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None):
    """(status, body) of a GET; status 0 when the connection failed."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class LocalMesh:
    config_dir: Path
    workloads: list[Workload]
    work_dir: Path
    xds_port: int = 0  # 0: pick a free port
    debug_port: int = 0
    subnet: str = ""  # "127.X.Y"; empty: a random one with free ports
    log_level: str = "INFO"
    xds_api: str = "delta"  # how the Envoys speak xDS: delta or sotw
    server_args: list[str] = field(default_factory=list)  # more `serve` flags
    server_env: dict[str, str] = field(default_factory=dict)
    # Each sidecar's bootstrap carries a token for its workload (xds-server token), so
    # the sidecars hold certificates and speak mutual TLS.
    tokens: bool = False
    # Sidecars speak xDS over TLS (the server's TLS port, verified with the mesh root);
    # None: when they carry tokens.
    xds_tls: bool | None = None
    xds_tls_port: int = 0  # 0: pick a free port
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _logs_started: set[str] = field(default_factory=set)

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> LocalMesh:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def taken(self) -> list[tuple[str, str, str]]:
        """The fixed addresses this mesh needs (its set ports, its set subnet) that are in
        use now, as PortsInUse lists them; empty when it can start."""
        found = []
        for setting, port, what in (
            ("xds_port", self.xds_port, "xDS"),
            ("xds_tls_port", self.xds_tls_port, "xDS over TLS"),
            ("debug_port", self.debug_port, "debug HTTP"),
        ):
            if port and not port_free("127.0.0.1", port):
                found.append((setting, f"127.0.0.1:{port}", what))
        if self.subnet:
            for i, workload in enumerate(self.workloads):
                ip = f"{self.subnet}.{i + 1}"
                for port, what in WORKLOAD_PORTS.items():
                    if not port_free(ip, port):
                        found.append(("subnet", f"{ip}:{port}", f"{workload.name} {what}"))
        return found

    def _start(self, timeout: float) -> None:
        taken = self.taken()
        if taken:
            raise PortsInUse(taken)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.xds_port = self.xds_port or free_port()
        self.xds_tls_port = self.xds_tls_port or free_port()
        self.debug_port = self.debug_port or free_port()
        self._assign_addresses()
        if self.tokens:  # the key the server will sign and check tokens with
            self._token_key = tokens.load_or_create_key(self.work_dir / "state")
        self.start_server(timeout)
        apps = [f"{w.app}:{w.version}:{w.app_port}@{w.ip}" for w in self.workloads if w.app_port]
        if apps:
            self._spawn("apps", [sys.executable, "-m", "xds_server.sample_app", *apps])
        envoy = find_envoy()
        for workload in self.workloads:
            bootstrap = self.work_dir / f"{workload.name}.yaml"
            options = self.bootstrap_options(workload)
            options.stats_matcher = self._stats_matcher()
            bootstrap.write_text(render(options))
            self._spawn(
                workload.name,
                [
                    envoy,
                    "-c",
                    str(bootstrap),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--drain-time-s",
                    "1",
                    "-l",
                    "warning",
                    "--log-path",
                    str(self.work_dir / f"{workload.name}.envoy.log"),
                    "--file-flush-interval-msec",
                    "200",
                ],
            )
        for workload in self.workloads:
            wait_until(
                lambda w=workload: self.envoy_ready(w) or self._check_alive(),
                timeout,
                f"Envoy {workload.name} to be LIVE",
            )
        for workload in self.workloads:
            if workload.app_port:
                wait_until(
                    lambda w=workload: not port_free(w.ip, w.app_port),
                    timeout,
                    f"app {workload.name}",
                )

    def start_server(self, timeout: float = 30.0) -> None:
        """Start the control plane (again) and wait until it answers /healthz."""
        self._spawn("xds-server", self.server_command(), self.server_env)
        wait_until(
            lambda: http_get(f"{self.debug_url}/healthz")[0] == 200 or self._check_alive(),
            timeout,
            "xds-server /healthz",
        )

    def kill_server(self) -> None:
        """SIGKILL the control plane, as a crash would end it."""
        process = self.processes.pop("xds-server")
        process.kill()
        process.wait(timeout=10)

    def server_command(self) -> list[str]:
        return serve_command(
            self.config_dir,
            self.work_dir,
            self.log_level,
            [
                *("--xds-port", str(self.xds_port)),
                *("--xds-tls-port", str(self.xds_tls_port)),
                *("--debug-port", str(self.debug_port)),
            ],
            self.server_args,
        )

    def _assign_addresses(self) -> None:
        ports = tuple(WORKLOAD_PORTS)
        candidates = (
            [self.subnet]
            if self.subnet
            else [f"127.{random.randint(1, 254)}.{random.randint(0, 254)}" for _ in range(20)]
        )
        for subnet in candidates:
            ips = [f"{subnet}.{i + 1}" for i in range(len(self.workloads))]
            if all(port_free(ip, p) for ip in ips for p in ports):
                for workload, ip in zip(self.workloads, ips, strict=True):
                    workload.ip = ip
                return
        if self.subnet:
            raise PortsInUse(self.taken())
        raise RuntimeError(f"ports {ports} are in use on every loopback subnet tried")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        # A restarted process appends to the log of its first run in this mesh.
        mode = "ab" if name in self._logs_started else "wb"
        self._logs_started.add(name)
        log = open(self.work_dir / f"{name}.out", mode)  # noqa: SIM115 (owned by the process)
        self.processes[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C or hangup of the terminal reaches only us, and we
            # stop every child; if we die without stopping them, the kernel kills them.
            start_new_session=True,
            preexec_fn=die_with_parent(),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        log.close()

    def _check_alive(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.work_dir / f"{name}.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
        return False

    def stop(self) -> None:
        stop_processes(self.processes.values())
        self.processes.clear()

    def __enter__(self) -> LocalMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- addresses ----------------------------------------------------------------------

    def bootstrap_options(self, workload: Workload) -> BootstrapOptions:
        return BootstrapOptions(
            node_id=workload.name,
            namespace=workload.namespace,
            labels=workload.labels,
            service_account=workload.app,
            app_ports=[workload.app_port] if workload.app_port else [],
            inbound_ports=[INBOUND_PORT] if workload.app_port else [],
            xds_address=f"127.0.0.1:{self.xds_tls_port if self.uses_tls else self.xds_port}",
            xds_root_cert=str(self.root_cert) if self.uses_tls else "",
            admin_address=workload.ip,
            admin_port=ADMIN_PORT,
            stats_address=workload.ip,
            stats_port=STATS_PORT,
            outbound_address=workload.ip,
            outbound_port=OUTBOUND_PORT,
            ip=workload.ip,
            bind_address=workload.ip,
            role=workload.role,
            xds_api=self.xds_api,
            token=tokens.issue(self._token_key, workload.namespace, workload.app, 86400)
            if self.tokens
            else "",
        )

    def _stats_matcher(self):
        """The mesh config's proxyStatsMatcher, read from the config directory."""
        from xds_server.config.store import ConfigStore

        return stats_matcher_of(ConfigStore(self.config_dir).load_all().mesh)

    def stats_url(self, name: str) -> str:
        """Where workload `name`'s proxy serves Istio's metrics (Prometheus text)."""
        return f"http://{self.workload(name).ip}:{STATS_PORT}/stats/prometheus"

    @property
    def uses_tls(self) -> bool:
        return self.tokens if self.xds_tls is None else self.xds_tls

    @property
    def root_cert(self) -> Path:
        """The mesh root the server made in its state directory (serve_command)."""
        return self.work_dir / "state" / "ca" / "root-cert.pem"

    def workload(self, name: str) -> Workload:
        return next(w for w in self.workloads if w.name == name)

    @property
    def debug_url(self) -> str:
        return f"http://127.0.0.1:{self.debug_port}"

    def admin_url(self, name: str) -> str:
        return f"http://{self.workload(name).ip}:{ADMIN_PORT}"

    def outbound(self, name: str) -> tuple[str, int]:
        """Where the app of workload `name` sends its outbound requests."""
        return self.workload(name).ip, OUTBOUND_PORT

    # ---- observing ----------------------------------------------------------------------

    def envoy_ready(self, workload: Workload) -> bool:
        status, body = http_get(f"http://{workload.ip}:{ADMIN_PORT}/ready", timeout=1)
        return status == 200 and body.strip() == "LIVE"

    def debug_json(self, path: str) -> Any:
        status, body = http_get(self.debug_url + path, timeout=5)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status} {body[:200]}")
        return json.loads(body)

    def envoy_stats(self, name: str, filter_regex: str = "") -> dict[str, str]:
        url = f"{self.admin_url(name)}/stats"
        if filter_regex:
            url += f"?filter={urllib.request.quote(filter_regex)}"
        status, body = http_get(url, timeout=5)
        stats = {}
        for line in body.splitlines():
            key, sep, value = line.partition(": ")
            if sep:
                stats[key] = value
        return stats

    def unsynced(self, min_generation: int = 0) -> list[str]:
        """Workloads not connected, or behind `min_generation`, or with a type not SYNCED."""
        syncz = self.debug_json("/debug/syncz")
        proxies = {p["proxy"]: p for p in syncz["proxies"]}
        behind = []
        for workload in self.workloads:
            proxy = proxies.get(workload.name)
            if proxy is None:
                behind.append(f"{workload.name}: not connected")
            elif proxy["generation"] < min_generation:
                behind.append(f"{workload.name}: generation {proxy['generation']}")
            elif not proxy["types"]:
                behind.append(f"{workload.name}: nothing requested")
            else:
                for name, state in proxy["types"].items():
                    if state["status"] != "SYNCED":
                        behind.append(f"{workload.name}: {name} {state['status']}")
        return behind

    def all_synced(self, min_generation: int = 0) -> bool:
        """Every workload connected, every type SYNCED, from at least `min_generation`."""
        return not self.unsynced(min_generation)

    def apply(self, filename: str, text: str) -> int:
        """Write a file into the config directory and wait until every proxy ACKed the
        config it produces; the generation that carries it."""
        path = self.config_dir / filename
        path.write_text(text)
        return self.wait_config_applied({str(path): hashlib.sha256(text.encode()).hexdigest()})

    def wait_config_applied(
        self,
        digest_by_file: dict[str, str | None],
        timeout: float = 15.0,
        interval: float = 0.05,
    ) -> int:
        """Wait until these file contents (sha256; None: the file is gone) are the versions
        in force and every proxy ACKed the result; returns the generation that carries
        them."""

        def accepted() -> int | None:
            configz = self.debug_json("/debug/configz")
            for name, digest in digest_by_file.items():
                if configz["accepted"].get(name) != digest:
                    return None
            if configz["pushed_version"] != configz["version"]:
                return None
            return configz["config_generation"]

        generation = wait_until(accepted, timeout, "the server to load the new files", interval)
        try:
            wait_until(lambda: self.all_synced(generation), timeout, "every proxy to ACK", interval)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {', '.join(self.unsynced(generation))}") from None
        return generation
