"""Small HTTP services for the demo and the tests: each answers with who it is.

Several apps run in one process (one thread each) to keep the demo light. A response is
JSON {"service", "version", "path", "headers"} with the header x-served-by: NAME-VERSION.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


def _handler(spec: AppSpec) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without this, Nagle's algorithm and
            # delayed ACKs add ~40 ms to every keep-alive response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            body = json.dumps(
                {
                    "service": spec.name,
                    "version": spec.version,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.send_header("x-served-by", f"{spec.name}-{spec.version}")
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
