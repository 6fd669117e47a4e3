"""TCP services through real Envoy: the caller's sidecar listens on the service's port
(no traffic capture here), tcp_proxy carries the bytes, a VirtualService `tcp` rule
splits connections by weight, and the serving sidecar's inbound listener is tcp_proxy."""

from __future__ import annotations

import collections
import socket

import pytest

from tests.e2e.test_seed_routing import tolerance

pytestmark = pytest.mark.e2e

TCP_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: tcp-echo}
spec:
  selector: {app: tcp-echo}
  ports: [{name: tcp, port: 9090, targetPort: 9080}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  trafficPolicy:
    connectionPool:
      tcp: {idleTimeout: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

SPLIT = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo]
  tcp:
  - match: [{port: 9090}]
    route:
    - {destination: {host: tcp-echo, subset: v1}, weight: 80}
    - {destination: {host: tcp-echo, subset: v2}, weight: 20}
"""


def exchange(ip: str, port: int) -> str:
    """One connection: send an HTTP request as opaque bytes, return who answered."""
    with socket.create_connection((ip, port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    for line in data.decode(errors="replace").split("\r\n"):
        if line.lower().startswith("x-served-by:"):
            return line.split(":", 1)[1].strip()
    return data[:80].decode(errors="replace")


def listener_filters(mesh, workload: str) -> dict[str, str]:
    out = {}
    for entry in mesh.envoy_config(workload, "dynamic_listeners"):
        listener = entry["active_state"]["listener"]
        out[listener["name"]] = listener["filter_chains"][0]["filters"][0]["name"]
    return out


def test_tcp_service_and_weighted_tcp_route(mesh):
    mesh.apply("tcp-echo.yaml", TCP_SERVICE)
    caller_ip = mesh.local.workload("caller").ip
    assert listener_filters(mesh, "caller")[f"{caller_ip}_9090"] == (
        "envoy.filters.network.tcp_proxy"
    )
    echo_ip = mesh.local.workload("tcp-echo-v1").ip
    assert listener_filters(mesh, "tcp-echo-v1")[f"{echo_ip}_15006"] == (
        "envoy.filters.network.tcp_proxy"
    )
    seen = collections.Counter(exchange(caller_ip, 9090) for _ in range(40))
    assert set(seen) == {"tcp-echo-v1", "tcp-echo-v2"}, seen

    mesh.apply("vs-tcp-echo.yaml", SPLIT)
    n = 300
    seen = collections.Counter(exchange(caller_ip, 9090) for _ in range(n))
    assert set(seen) <= {"tcp-echo-v1", "tcp-echo-v2"}, seen
    assert abs(seen["tcp-echo-v2"] / n - 0.2) < tolerance(0.2, n), seen
    mesh.remove("vs-tcp-echo.yaml")
    mesh.remove("tcp-echo.yaml")
