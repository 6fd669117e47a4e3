"""Small HTTP services for the demo and the tests: each answers with who it is.

Several apps run in one process (one thread each) to keep the demo light. A response is
JSON {"service", "version", "instance", "path", "headers", "attempt"} with the headers
x-served-by: NAME-VERSION and x-instance: HOST:PORT.

Request headers make an app misbehave on purpose, so tests can watch the proxies react:
- x-delay-ms: N        answer after N ms
- x-status: CODE       answer with this status
- x-fail-first: N      with x-request-key: K, the first N requests with key K get 503
                       (or x-status); later ones succeed. "attempt" counts them per key.
- x-slow-first: N      with x-request-key: K, only the first N requests are delayed
Instance-wide switches, for outlier detection: GET /admin/fail?status=503 makes every later
request fail, /admin/ok undoes it, and /admin/count reports how many requests were served.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class AppSpec:
    name: str
    version: str
    port: int
    host: str = "127.0.0.1"

    @classmethod
    def parse(cls, text: str) -> AppSpec:
        """NAME:VERSION:PORT[@HOST]"""
        spec, _, host = text.partition("@")
        name, version, port = spec.split(":")
        return cls(name, version, int(port), host or "127.0.0.1")


@dataclass
class _State:
    """What one app instance remembers between requests."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    attempts: Counter = field(default_factory=Counter)
    served: int = 0
    fail_status: int = 0

    def attempt(self, key: str) -> int:
        with self.lock:
            self.served += 1
            if key:
                self.attempts[key] += 1
                return self.attempts[key]
            return 1


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _handler(spec: AppSpec) -> type[BaseHTTPRequestHandler]:
    state = _State()
    instance = f"{spec.host}:{spec.port}"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without this, Nagle's algorithm and
            # delayed ACKs add ~40 ms to every keep-alive response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _admin(self) -> bool:
            url = urlsplit(self.path)
            if not url.path.startswith("/admin/"):
                return False
            if url.path == "/admin/fail":
                state.fail_status = _int(parse_qs(url.query).get("status", ["503"])[0]) or 503
            elif url.path == "/admin/ok":
                state.fail_status = 0
            self._send(200, {"served": state.served, "fail_status": state.fail_status})
            return True

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            if self._admin():
                return
            headers = self.headers
            attempt = state.attempt(headers.get("x-request-key", ""))
            status = _int(headers.get("x-status")) or 200
            if attempt <= _int(headers.get("x-fail-first")):
                status = _int(headers.get("x-status")) or 503
            elif headers.get("x-fail-first"):
                status = 200
            if state.fail_status:
                status = state.fail_status
            delay = _int(headers.get("x-delay-ms"))
            slow_first = headers.get("x-slow-first")
            if slow_first is not None and attempt > _int(slow_first):
                delay = 0
            if delay:
                time.sleep(delay / 1000)
            self._send(
                status,
                {
                    "service": spec.name,
                    "version": spec.version,
                    "instance": instance,
                    "path": self.path,
                    "attempt": attempt,
                    "headers": {k.lower(): v for k, v in headers.items()},
                },
            )

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.send_header("x-served-by", f"{spec.name}-{spec.version}")
            self.send_header("x-instance", instance)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815

        def log_message(self, *args) -> None:  # quiet
            pass

    return Handler


def start_apps(specs: list[AppSpec]) -> list[ThreadingHTTPServer]:
    servers = []
    for spec in specs:
        server = ThreadingHTTPServer((spec.host, spec.port), _handler(spec))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("apps", nargs="+", type=AppSpec.parse, help="NAME:VERSION:PORT[@HOST]")
    args = parser.parse_args()
    start_apps(args.apps)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
