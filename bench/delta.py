"""Delta against SotW xDS with one real Envoy: adding one cluster to N.

The mesh holds N ServiceEntries (one cluster each, STATIC endpoints, all on port 9000 so
every one is a virtual host of the same outbound route configuration). One Envoy sidecar
connects, in delta or in SotW mode. Then files adding one ServiceEntry each are written,
one at a time; for each the clock runs from the write until Envoy's
`cluster_manager.active_clusters` counts the new cluster (its admin API polled every
5 ms), and the bytes the server sent for that change are read per type from
/debug/syncz. The route configuration holds a virtual host per service, so RDS is O(N)
in both modes (Istio's too, short of VHDS); clusters and endpoints are where delta saves.

    python bench/delta.py [--sizes 1000,5000] [--adds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from xds_server.launcher import LocalMesh, Workload, wait_until

ENTRY = """apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: se-%(i)d}
spec:
  hosts: [se-%(i)d.example.internal]
  ports: [{number: 9000, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 127.0.%(a)d.%(b)d}]
"""


def entry(i: int) -> str:
    return ENTRY % {"i": i, "a": 100 + i // 250, "b": 1 + i % 250}


def active_clusters(mesh: LocalMesh) -> int:
    stats = mesh.envoy_stats("probe", r"^cluster_manager\.active_clusters$")
    return int(next(iter(stats.values()), 0))


def bytes_by_type(mesh: LocalMesh) -> dict[str, int]:
    for proxy in mesh.debug_json("/debug/syncz")["proxies"]:
        if proxy["proxy"] == "probe":
            return {name: state["bytes_sent"] for name, state in proxy["types"].items()}
    return {}


def measure(size: int, api: str, adds: int) -> tuple[float, list[float], dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = root / "config"
        config.mkdir()
        (config / "entries.yaml").write_text("---\n".join(entry(i) for i in range(size)))
        probe = [Workload("probe", "probe", app_port=None)]
        started = time.perf_counter()
        with LocalMesh(config, probe, root / "work", log_level="WARNING", xds_api=api) as mesh:
            wait_until(lambda: active_clusters(mesh) >= size, 120, "all clusters", 0.05)
            wait_until(mesh.all_synced, 60, "the probe to ACK", 0.05)
            first = time.perf_counter() - started
            times, sent = [], {}
            for n in range(adds):
                before, counted = bytes_by_type(mesh), active_clusters(mesh)
                began = time.perf_counter()
                (config / f"add-{n}.yaml").write_text(entry(size + n))
                wait_until(lambda c=counted: active_clusters(mesh) > c, 30, "the cluster", 0.005)
                times.append(time.perf_counter() - began)
                wait_until(mesh.all_synced, 30, "the probe to ACK", 0.005)
                after = bytes_by_type(mesh)
                for name, value in after.items():
                    sent.setdefault(name, []).append(value - before.get(name, 0))
            return first, times, {k: statistics.median(v) for k, v in sorted(sent.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--adds", type=int, default=5)
    parser.add_argument("--apis", default="sotw,delta")
    args = parser.parse_args()
    print(f"{'clusters':>8} {'api':>5} {'start':>7} {'add p50':>8} {'add max':>8}  bytes per add")
    for size in (int(s) for s in args.sizes.split(",")):
        for api in args.apis.split(","):
            first, times, sent = measure(size, api, args.adds)
            shown = ", ".join(f"{k} {v / 1000:.1f} KB" for k, v in sent.items() if v)
            print(
                f"{size:>8} {api:>5} {first:>6.1f}s {statistics.median(times) * 1000:>6.0f}ms "
                f"{max(times) * 1000:>6.0f}ms  {shown}",
                flush=True,
            )


if __name__ == "__main__":
    main()
