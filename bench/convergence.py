"""Time from a file edit to every connected Envoy's ACK, with 1, 10 and 20 real Envoys.

Starts the local mesh (server + N Envoy sidecars + sample apps), then rewrites a
VirtualService several times; each edit changes every sidecar's routes. The clock runs
from the file write until the server has received an ACK of the new routes from every
Envoy (polling /debug/syncz every 5 ms), so it includes the file watcher's debounce
(50 ms), translation, the push and Envoy applying the update.

    python bench/convergence.py [--sizes 1,10,20] [--edits 5]
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


def measure(envoys: int, edits: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = root / "config"
        config.mkdir()
        (config / "services.yaml").write_text(SERVICES)
        workloads = [Workload(f"reviews-{i}", "reviews", f"v{1 + i % 2}") for i in range(envoys)]
        with LocalMesh(config, workloads, root / "work", log_level="WARNING") as mesh:
            vs = config / "vs.yaml"
            mesh.wait_config_applied({})
            times = []
            for edit in range(edits + 1):
                text = VS % (50 + edit, 50 - edit)
                started = time.perf_counter()
                vs.write_text(text)
                digest = hashlib.sha256(text.encode()).hexdigest()
                mesh.wait_config_applied({str(vs): digest}, timeout=30, interval=0.005)
                if edit:  # the first edit creates the file; measure the changes after it
                    times.append(time.perf_counter() - started)
            return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,10,20")
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()
    print(f"{'envoys':>6} {'median ms':>10} {'min ms':>8} {'max ms':>8}  (edit -> all ACKed)")
    for size in (int(s) for s in args.sizes.split(",")):
        times = measure(size, args.edits)
        print(
            f"{size:>6} {statistics.median(times) * 1000:>10.0f} {min(times) * 1000:>8.0f} "
            f"{max(times) * 1000:>8.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
