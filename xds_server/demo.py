"""`xds-server demo`: a Bookinfo-like mesh on this machine, with real Envoy sidecars."""

from __future__ import annotations

import collections
import http.client
import shutil
import signal
import threading
from pathlib import Path

from xds_server.launcher import OUTBOUND_PORT, LocalMesh, Workload

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


def run_demo(directory: Path, base_port: int = 15010) -> int:
    if not directory.exists():
        shutil.copytree(DEMO_CONFIG, directory)
        print(f"wrote the demo's config to {directory}/")
    work = directory.parent / f".{directory.name}-run"
    mesh = LocalMesh(
        directory.resolve(),
        demo_workloads(),
        work.resolve(),
        xds_port=base_port,
        debug_port=base_port + 4,
        subnet=SUBNET,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("starting the control plane, 4 Envoy sidecars, an ingress gateway and 3 apps ...")
    with mesh:
        sleep_ip = mesh.workload("sleep").ip
        gateway_ip = mesh.workload("ingressgateway").ip
        counts = ", ".join(f"{k} {v}" for k, v in sorted(_sample(sleep_ip).items()))
        print(
            f"""
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

Edit {directory}/reviews-virtualservice.yaml and save: routing changes at once.
  xds-server validate {directory}                      # check the files
  curl -s http://127.0.0.1:{mesh.debug_port}/debug/syncz          # what each Envoy ACKed
  curl -s 'http://127.0.0.1:{mesh.debug_port}/debug/config_dump?proxy=sleep'
  curl -s http://{sleep_ip}:15000/stats | grep update_rejected    # Envoy's own view
Logs: {work}/   Press Ctrl-C to stop.""",
            flush=True,
        )
        while not stop.wait(0.5):
            if any(p.poll() is not None for p in mesh.processes.values()):
                print("a mesh process exited; see the logs above. Stopping.")
                return 1
    print("stopped.")
    return 0
