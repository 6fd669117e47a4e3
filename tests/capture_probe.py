"""Small servers and clients for the capture tests, run inside network namespaces.

    python -m tests.capture_probe sidecar        # 15001, 15006 and 15021 (TCP), 15053 (UDP)
    python -m tests.capture_probe outside ADDR   # ADDR:9080 (TCP) and ADDR:53 (UDP)
    python -m tests.capture_probe tcp-server ADDR PORT NAME
    python -m tests.capture_probe udp-server ADDR PORT NAME
    python -m tests.capture_probe dns ADDR NAME=IPV4 ...  # a DNS server on ADDR:53
    python -m tests.capture_probe tcp HOST PORT  # prints the server's one-line answer
    python -m tests.capture_probe udp HOST PORT
    python -m tests.capture_probe http URL [NAME:VALUE ...]  # prints the status, then the body
    python -m tests.capture_probe resolve NAME   # its IPv4 address, by the system resolver

A TCP server answers each connection with one line naming itself and, for a redirected
connection, its original destination (SO_ORIGINAL_DST; "-" for a connection made to the
server itself), so a client sees where its traffic went. Servers print "ready" once
listening and run until killed.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80


def _original_destination(conn: socket.socket) -> str:
    """Where a redirected connection was going; "-" when it came here directly."""
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return "-"
    original = (socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0])
    return "-" if original == conn.getsockname() else f"{original[0]}:{original[1]}"


def _tcp(address: str, port: int, name: str) -> None:
    server = socket.create_server((address, port), reuse_port=False)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                conn.sendall(f"{name} {_original_destination(conn)}\n".encode())

    threading.Thread(target=serve, daemon=True).start()


def _udp(address: str, port: int, name: str) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, port))

    def serve() -> None:
        while True:
            _, peer = server.recvfrom(512)
            server.sendto(name.encode(), peer)

    threading.Thread(target=serve, daemon=True).start()


def _dns_answer(query: bytes, table: dict[str, str]) -> bytes:
    """The answer to one DNS query: A records from `table`, NXDOMAIN for other names
    (an empty answer for other types of a known name)."""
    labels, offset = [], 12
    while query[offset]:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode().lower())
        offset += 1 + length
    qtype = struct.unpack("!H", query[offset + 1 : offset + 3])[0]
    question = query[12 : offset + 5]
    address = table.get(".".join(labels))
    answers = b""
    if address is not None and qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(address)
    rcode = 0 if address is not None else 3
    header = query[:2] + struct.pack("!HHHHH", 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def _dns(address: str, table: dict[str, str]) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, 53))

    def serve() -> None:
        while True:
            query, peer = server.recvfrom(512)
            server.sendto(_dns_answer(query, table), peer)

    threading.Thread(target=serve, daemon=True).start()


def main(argv: list[str]) -> int:
    command = argv[0]
    if command == "sidecar":
        _tcp("0.0.0.0", 15001, "outbound")
        _tcp("0.0.0.0", 15006, "inbound")
        _tcp("0.0.0.0", 15021, "health")
        _udp("0.0.0.0", 15053, "dns")
    elif command == "outside":
        _tcp(argv[1], 9080, "outside")
        _udp(argv[1], 53, "upstream")
    elif command == "tcp-server":
        _tcp(argv[1], int(argv[2]), argv[3])
    elif command == "udp-server":
        _udp(argv[1], int(argv[2]), argv[3])
    elif command == "dns":
        _dns(argv[1], dict(entry.split("=", 1) for entry in argv[2:]))
    elif command == "tcp":
        try:
            with socket.create_connection((argv[1], int(argv[2])), timeout=3) as conn:
                print(conn.makefile().readline().strip() or "closed")
        except OSError as exc:
            print(f"error {exc}")
        return 0
    elif command == "http":
        import urllib.error
        import urllib.request

        headers = dict(h.split(":", 1) for h in argv[2:])
        request = urllib.request.Request(argv[1], headers=headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
        try:
            with opener.open(request, timeout=5) as response:
                print(response.status)
                print(response.read().decode())
        except urllib.error.HTTPError as exc:
            print(exc.code)
            print(exc.read().decode())
        return 0
    elif command == "resolve":
        try:
            print(socket.gethostbyname(argv[1]))
        except OSError as exc:
            print(f"error {exc}")
        return 0
    elif command == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(b"query", (argv[1], int(argv[2])))
            print(sock.recvfrom(512)[0].decode())
        return 0
    else:
        print(f"unknown command {command}", file=sys.stderr)
        return 2
    print("ready", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
