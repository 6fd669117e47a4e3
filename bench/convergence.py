"""Time from a file edit to every connected Envoy's ACK, with 1, 10, 20 and 50 real Envoys.

Starts the local mesh (server + N Envoy sidecars + sample apps), then rewrites a
VirtualService several times; each edit changes every sidecar's routes. The clock runs
from the file write until the server has received an ACK of the new routes from every
Envoy (the time of the last RDS ACK, as the server recorded it), so it includes the file
watcher, loading, translation, the push and Envoy applying the update.

    python bench/convergence.py [--sizes 1,10,20,50] [--edits 20] [--xds-api delta,sotw]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from xds_server.launcher import LocalMesh, Workload

SERVICES = """apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""
VS = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: %d}
    - {destination: {host: reviews, subset: v2}, weight: %d}
"""


def last_route_ack(mesh: LocalMesh) -> float:
    """When the server received the last RDS ACK of any proxy (its own clock)."""
    syncz = mesh.debug_json("/debug/syncz")
    return max(p["types"]["RDS"]["acked_at"] for p in syncz["proxies"] if "RDS" in p["types"])


def measure(envoys: int, edits: int, api: str) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = root / "config"
        config.mkdir()
        (config / "services.yaml").write_text(SERVICES)
        workloads = [Workload(f"reviews-{i}", "reviews", f"v{1 + i % 2}") for i in range(envoys)]
        with LocalMesh(config, workloads, root / "work", log_level="WARNING", xds_api=api) as mesh:
            vs = config / "vs.yaml"
            mesh.wait_config_applied({})
            times = []
            for edit in range(edits + 1):
                text = VS % (50 + edit, 50 - edit)
                time.sleep(0.3)  # a quiet spell, as between a user's edits
                started = time.time()
                vs.write_text(text)
                digest = hashlib.sha256(text.encode()).hexdigest()
                # Polled slowly: the server's own ACK times are the measure, and polling
                # every few ms would take the CPU the server and the Envoys need.
                mesh.wait_config_applied({str(vs): digest}, timeout=30, interval=0.1)
                if edit:  # the first edit creates the file; measure the changes after it
                    times.append(last_route_ack(mesh) - started)
            return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,10,20,50")
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--xds-api", default="delta,sotw")
    args = parser.parse_args()
    print(
        f"{'envoys':>6} {'api':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  (edit -> all ACKed)"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        for api in args.xds_api.split(","):
            times = measure(size, args.edits, api)
            print(
                f"{size:>6} {api:>5} {statistics.median(times) * 1000:>7.0f} "
                f"{percentile(times, 0.99) * 1000:>7.0f} {max(times) * 1000:>7.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
