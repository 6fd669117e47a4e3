"""`xds-server demo`: a Bookinfo-like mesh on this machine, with real Envoy sidecars."""

from __future__ import annotations

import collections
import contextlib
import http.client
import re
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from xds_server import demo_pods
from xds_server.launcher import (
    OUTBOUND_PORT,
    STATS_PORT,
    WORKLOAD_PORTS,
    LocalMesh,
    PortsInUse,
    Workload,
    port_free,
)

DEMO_CONFIG = Path(__file__).resolve().parent / "demo_mesh"
SUBNET = "127.0.10"
GATEWAY_PORT = 8080  # the demo Gateway's server port


def demo_workloads() -> list[Workload]:
    return [
        Workload("sleep", "sleep", app_port=None),  # Istio's client sample: no app port
        Workload("reviews-v1", "reviews", "v1"),
        Workload("reviews-v2", "reviews", "v2"),
        Workload("reviews-v3", "reviews", "v3"),
        # Gateways select it by its label istio=ingressgateway (demo_mesh/gateway.yaml).
        Workload("ingressgateway", "istio-ingressgateway", app_port=None, role="gateway"),
    ]


def _sample(ip: str, count: int = 100) -> collections.Counter:
    conn = http.client.HTTPConnection(ip, OUTBOUND_PORT, timeout=5)
    seen: collections.Counter = collections.Counter()
    for _ in range(count):
        conn.request("GET", "/", headers={"Host": "reviews"})
        response = conn.getresponse()
        response.read()
        seen[response.getheader("x-served-by") or str(response.status)] += 1
    conn.close()
    return seen


def _say(text: str, file: TextIO | None = None) -> None:
    """Print a line; a closed terminal (after a hangup) must not stop the shutdown."""
    out = file or sys.stdout
    with contextlib.suppress(OSError, ValueError):
        out.write(text + "\n")
        out.flush()


# A record as `xds-server --log-level ...` formats it (cli.main).
_RECORD = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)"
)
_ISSUE = re.compile(r"\S+:\d+: (error|warning): ")  # a config issue: file:line: severity: ...
_SHOWN_LEVELS = ("WARNING", "ERROR", "CRITICAL")


class ServerLog:
    """Follows the server's output file from a thread and echoes its warnings and errors
    (config issues with file:line, tracebacks) to the console as they are written.

    Bounded: it polls a few times a second, reads at most `chunk` bytes per poll, cuts
    overlong lines and shows at most `max_continuation` lines of one record's traceback.
    """

    def __init__(
        self,
        path: Path,
        out: TextIO | None = None,
        prefix: str = "xds-server: ",
        interval: float = 0.1,
        chunk: int = 64 * 1024,
        max_line: int = 2000,
        max_continuation: int = 40,
    ) -> None:
        self.path, self.out, self.prefix = path, out or sys.stdout, prefix
        self.interval, self.chunk, self.max_line = interval, chunk, max_line
        self.max_continuation = max_continuation
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-log", daemon=True)
        self._pending = b""
        self._showing = False  # the current record is shown, so are its continuation lines
        self._continued = 0

    def start(self) -> ServerLog:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Show what is left in the file, then end the thread."""
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> ServerLog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        file = None
        try:
            while True:
                stopping = self._stop.is_set()
                if file is None:
                    with contextlib.suppress(FileNotFoundError):
                        file = open(self.path, "rb")  # noqa: SIM115 (closed below)
                if file is not None:
                    # One chunk per poll; what is left (bounded) once asked to stop.
                    for _ in range(64 if stopping else 1):
                        data = file.read(self.chunk)
                        if not data:
                            break
                        if not self._emit(data):
                            return  # the console is gone: nothing more to show
                if stopping:
                    return
                self._stop.wait(self.interval)
        except (OSError, ValueError):
            return
        finally:
            if file is not None:
                file.close()

    def _emit(self, data: bytes) -> bool:
        """Show the complete lines in `data`; False when the console is gone."""
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > self.max_line:  # a line with no end in sight: cut it
            lines.append(self._pending)
            self._pending = b""
        for raw in lines:
            text = self.filter(raw.decode(errors="replace").rstrip("\r"))
            if text is not None:
                if len(text) > self.max_line:
                    text = text[: self.max_line] + " ..."
                try:
                    self.out.write(f"{self.prefix}{text}\n")  # one write: whole lines
                    self.out.flush()
                except (OSError, ValueError):
                    return False
        return True

    def filter(self, line: str) -> str | None:
        """What the console shows for one line of the server's output, or None."""
        record = _RECORD.fullmatch(line)
        if record is not None:
            self._showing = record["level"] in _SHOWN_LEVELS
            self._continued = 0
            if not self._showing:
                return None
            message = record["message"]
            return message if _ISSUE.match(message) else f"{record['level'].lower()}: {message}"
        if line.startswith("Traceback (most recent call last)"):
            self._showing, self._continued = True, 0  # an uncaught exception
        if not self._showing or not line.strip():
            return None
        self._continued += 1
        if self._continued > self.max_continuation:
            if self._continued == self.max_continuation + 1:
                return f"  ... (more in {self.path})"
            return None
        return line


def _free_subnet(mesh: LocalMesh) -> str | None:
    """A loopback subnet near the mesh's where every workload address is free."""
    first, second, third = (int(p) for p in mesh.subnet.split("."))
    for step in range(1, 21):
        subnet = f"{first}.{second}.{(third + step) % 256}"
        ips = [f"{subnet}.{i + 1}" for i in range(len(mesh.workloads))]
        if all(port_free(ip, port) for ip in ips for port in WORKLOAD_PORTS):
            return subnet
    return None


def _free_ports(base: int, both: bool) -> int | None:
    """An xDS port near `base` that is free, with the TLS port at +2 (and the debug port
    at +4 when `both`)."""
    for port in range(base + 10, min(base + 210, 65531), 10):
        if (
            port_free("127.0.0.1", port)
            and port_free("127.0.0.1", port + 2)
            and (not both or port_free("127.0.0.1", port + 4))
        ):
            return port
    return None


def taken_message(error: PortsInUse, mesh: LocalMesh, debug_port_set: bool) -> str:
    """One line: what is in use, and the flags that move the demo elsewhere."""
    kinds = collections.defaultdict(list)
    for setting, address, what in error.taken:
        kinds[setting].append(f"{address} ({what})")
    parts = kinds["xds_port"] + kinds["xds_tls_port"] + kinds["debug_port"]
    if kinds["subnet"]:
        more = len(kinds["subnet"]) - 1
        parts.append(kinds["subnet"][0] + (f" and {more} more on {mesh.subnet}.*" if more else ""))
    flags = []
    if kinds["xds_port"] or kinds["xds_tls_port"] or (kinds["debug_port"] and not debug_port_set):
        port = _free_ports(mesh.xds_port, both=not debug_port_set)
        flags.append(f"--xds-port {port or 'PORT'}")
    if kinds["debug_port"] and debug_port_set:
        port = _free_ports(mesh.debug_port, both=False)
        flags.append(f"--debug-port {port or 'PORT'}")
    if kinds["subnet"]:
        flags.append(f"--subnet {_free_subnet(mesh) or '127.X.Y'}")
    verb = "is" if len(error.taken) == 1 else "are"
    return (
        f"error: {', '.join(parts)} {verb} in use (is another demo running?); "
        f"run this one elsewhere with {' '.join(flags)}"
    )


class _Stop(BaseException):
    """A signal arrived while the mesh was starting: unwind, stopping what started."""


def run_demo(
    directory: Path,
    base_port: int = 15010,
    debug_port: int | None = None,
    subnet: str = SUBNET,
    pods: bool = False,
) -> int:
    if pods:
        why = demo_pods.unavailable()
        if why is not None:
            _say(f"pods need network namespaces, and {why}: running the demo without them")
            pods = False
        else:
            why = demo_pods.clear_leftovers()
            if why is not None:
                _say(f"error: {why}", file=sys.stderr)
                return 2
    # Runs of the same --dir on other subnets (or as pods) keep their logs apart.
    suffix = "-pods" if pods else "" if subnet == SUBNET else f"-{subnet}"
    work = directory.parent / f".{directory.name}-run{suffix}"
    mesh: LocalMesh | demo_pods.PodDemo
    if pods:
        mesh = demo_pods.PodDemo(directory, work.resolve())
    else:
        mesh = LocalMesh(
            directory,  # as the user named it: errors then read demo-mesh/x.yaml:9
            demo_workloads(),
            work.resolve(),
            xds_port=base_port,
            xds_tls_port=base_port + 2,
            debug_port=debug_port or base_port + 4,
            subnet=subnet,
            tokens=True,  # certificates, mutual TLS, xDS over TLS
        )
        taken = mesh.taken()
        if taken:
            _say(taken_message(PortsInUse(taken), mesh, debug_port is not None), file=sys.stderr)
            return 2

    stop = threading.Event()
    phase = ["starting"]  # then "running"; "stopping" once a signal was acted on

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if phase[0] == "starting":
            phase[0] = "stopping"
            raise _Stop(signal.Signals(signum).name)

    # SIGHUP too: closing the terminal must stop every process, as Ctrl-C does.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):  # no SIGHUP on Windows
            signal.signal(getattr(signal, name), on_signal)

    server_log = work.resolve() / "xds-server.out"
    try:
        if not directory.exists():
            shutil.copytree(DEMO_CONFIG, directory)
            _say(f"wrote the demo's config to {directory}/")
        with contextlib.suppress(FileNotFoundError):
            server_log.unlink()  # a previous run's: follow only this run's output
        how = " as pods" if pods else ""
        _say(f"starting the control plane, 4 Envoy sidecars, an ingress gateway and 3 apps{how}")
        with ServerLog(server_log), mesh:
            try:
                if isinstance(mesh, demo_pods.PodDemo):
                    _say(mesh.instructions(directory))
                else:
                    _say(_instructions(mesh, directory, work))
                status = _watch(mesh.processes, work, stop, phase)
            finally:
                phase[0] = "stopping"  # a signal must not interrupt the stopping
    except _Stop:
        status = 0
    except PortsInUse as exc:  # taken between the check and the start
        _say(taken_message(exc, mesh, debug_port is not None), file=sys.stderr)
        return 2
    except (RuntimeError, OSError, http.client.HTTPException) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = lines[0].rstrip(":") if lines else type(exc).__name__
        if len(lines) > 1:
            why += f": {lines[-1]}"  # e.g. the last line of a process's output
        _say(f"error: the demo failed: {why} (logs in {work}/)", file=sys.stderr)
        return 1
    _say("stopped.")
    return status


def _instructions(mesh: LocalMesh, directory: Path, work: Path) -> str:
    sleep_ip = mesh.workload("sleep").ip
    gateway_ip = mesh.workload("ingressgateway").ip
    counts = ", ".join(f"{k} {v}" for k, v in sorted(_sample(sleep_ip).items()))
    return f"""
The mesh is up. 100 requests to reviews from the sleep sidecar landed on: {counts}

Send requests through the sleep workload's sidecar, whose outbound proxy is
{sleep_ip}:{OUTBOUND_PORT}:
  curl -s -H 'Host: reviews' http://{sleep_ip}:{OUTBOUND_PORT}/           # v1 75%, v2 25%
  curl -s -H 'Host: reviews' -H 'end-user: jason' http://{sleep_ip}:{OUTBOUND_PORT}/
  curl -s -x http://{sleep_ip}:{OUTBOUND_PORT} http://reviews:9080/        # as an HTTP proxy
  for i in $(seq 10); do curl -s -o /dev/null -D - -H 'Host: reviews' \\
      http://{sleep_ip}:{OUTBOUND_PORT}/ | grep -i x-served-by; done

From outside the mesh, through the ingress gateway (Gateway + VirtualService in
{directory}/gateway.yaml):
  curl -s http://{gateway_ip}:{GATEWAY_PORT}/reviews

Edit {directory}/reviews-virtualservice.yaml and save: routing changes at once; config
errors and warnings show here as "xds-server: FILE:LINE: error: ...".
  xds-server validate {directory}                      # check the files
  xds-server proxy-status --server http://127.0.0.1:{mesh.debug_port}   # every proxy's sync
  xds-server proxy-config routes sleep --server http://127.0.0.1:{mesh.debug_port}
  http://127.0.0.1:{mesh.debug_port}/ in a browser: the live mesh page
  curl -s http://127.0.0.1:{mesh.debug_port}/debug/syncz          # what each Envoy ACKed
  curl -s 'http://127.0.0.1:{mesh.debug_port}/debug/config_dump?proxy=sleep'
  curl -s http://{sleep_ip}:15000/stats | grep update_rejected    # Envoy's own view
Istio's metrics, as Prometheus scrapes them from each proxy (reporter=source here):
  curl -s http://{sleep_ip}:{STATS_PORT}/stats/prometheus | grep '^istio_requests_total'
The sidecars call each other over mutual TLS (see x-forwarded-client-cert in a reply):
  xds-server cert --server http://127.0.0.1:{mesh.debug_port} --proxy sleep
Logs: {work}/   Press Ctrl-C to stop."""


def _watch(processes: dict, work: Path, stop, phase: list[str]) -> int:
    """Until a signal (0), or until one of the mesh's processes exits (1)."""
    phase[0] = "running"  # from now on a signal ends the loop below
    while not stop.wait(0.5):
        exited = [name for name, p in processes.items() if p.poll() is not None]
        if exited:
            _say(f"{', '.join(exited)} exited; see {work}/. Stopping.", file=sys.stderr)
            return 1
    return 0
