"""Translation time for one sidecar with 10 / 100 / 1000 services.

Each service has a Kubernetes Service, a two-subset DestinationRule and a VirtualService
with a header match and a weighted split, and two connected workloads. With --full, the
DestinationRule also has a connection pool, outlier detection, cookie hashing and a subset
override, and the VirtualService retries, a fault, a timeout, header edits, CORS and a
mirror. Prints the full translation for one sidecar (clusters, endpoints, listeners,
routes, packed and hashed) on a fresh world: the first run, when the process has no
bytes cached for these shapes (cluster templates, endpoint localities, route matches),
and the median of several (which do, as a running server has); the size of what that
sidecar receives; and the time of a push: one sidecar in each of the 10 namespaces. The
garbage collector is set as the server sets it once its config is loaded.

    python bench/translation.py [--sizes 10,100,1000] [--runs 5] [--full]
"""

from __future__ import annotations

import argparse
import statistics
import time

from translators import model
from translators.cache import CrossPushCache
from translators.snapshot import Translator, World
from xds_server import heap
from xds_server.config.loader import parse_file

SERVICE = """apiVersion: v1
kind: Service
metadata: {name: svc-%(i)d, namespace: ns-%(ns)d}
spec:
  selector: {app: svc-%(i)d}
  ports: [{name: http, port: 8080}]
---
"""
TEMPLATE = (
    SERVICE
    + """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: svc-%(i)d, namespace: ns-%(ns)d}
spec:
  host: svc-%(i)d
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: svc-%(i)d, namespace: ns-%(ns)d}
spec:
  hosts: [svc-%(i)d]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: svc-%(i)d, subset: v2}}]
  - route:
    - {destination: {host: svc-%(i)d, subset: v1}, weight: 90}
    - {destination: {host: svc-%(i)d, subset: v2}, weight: 10}
"""
)
FULL_TEMPLATE = (
    SERVICE
    + """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: svc-%(i)d, namespace: ns-%(ns)d}
spec:
  host: svc-%(i)d
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: session, ttl: 3600s}}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 50, maxRequestsPerConnection: 10, idleTimeout: 60s}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 10}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: svc-%(i)d, namespace: ns-%(ns)d}
spec:
  hosts: [svc-%(i)d]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    fault:
      delay: {fixedDelay: 1s, percentage: {value: 5}}
      abort: {httpStatus: 503, percentage: {value: 1}}
    route: [{destination: {host: svc-%(i)d, subset: v2}}]
  - timeout: 10s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure,503"}
    headers:
      request: {set: {x-mesh: bench}, remove: [x-debug]}
      response: {add: {x-served: mesh}}
    corsPolicy:
      allowOrigins: [{exact: "https://example.com"}]
      allowMethods: [GET, POST]
      maxAge: 24h
    mirror: {host: svc-%(i)d, subset: v1}
    mirrorPercentage: {value: 10}
    route:
    - {destination: {host: svc-%(i)d, subset: v1}, weight: 90}
    - {destination: {host: svc-%(i)d, subset: v2}, weight: 10}
"""
)


# Telemetry off: a mesh-wide Telemetry turns every metric off (and nothing else is set).
TELEMETRY_OFF = """apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides: [{disabled: true}]
"""
# Telemetry on every listener: metrics (Istio's default), access logs and tracing.
TELEMETRY_FULL = """apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogFile: /dev/stdout
    defaultConfig:
      tracing:
        zipkin: {address: zipkin.istio-system:9411}
        sampling: 10
"""
TELEMETRY = {"off": TELEMETRY_OFF, "metrics": "", "full": TELEMETRY_FULL}


def build_world(count: int, full: bool = False, telemetry: str = "metrics") -> World:
    template = FULL_TEMPLATE if full else TEMPLATE
    text = "\n---\n".join(template % {"i": i, "ns": i % 10} for i in range(count))
    if TELEMETRY[telemetry]:
        text += "\n---\n" + TELEMETRY[telemetry]
    parsed = parse_file("bench.yaml", text)
    assert parsed.ok, parsed.issues[:3]
    mesh = model.default_mesh()
    if parsed.mesh is not None:
        mesh.MergeFrom(parsed.mesh)
    proxies = tuple(
        model.Proxy(
            f"svc-{i}-{v}",
            namespace=f"ns-{i % 10}",
            labels={"app": f"svc-{i}", "version": v},
            ip=f"10.{i // 250}.{i % 250}.{n}",
            ports=(model.WorkloadPort(8080, 15006),),
        )
        for i in range(count)
        for n, v in enumerate(("v1", "v2"), start=1)
    )
    return World(model.MeshConfig(resources=tuple(parsed.resources), mesh=mesh), proxies)


def measure(count: int, runs: int, full: bool = False, telemetry: str = "metrics") -> dict:
    world = build_world(count, full, telemetry)
    _ = world.services  # the registry is built once per world, shared by all proxies
    heap.settle()  # the collector as the server sets it once its config is loaded
    proxy = world.proxies[0]
    times = []
    for _ in range(runs):
        fresh = World(world.config, world.proxies)  # nothing cached from an earlier run ...
        fresh.__dict__["services"] = world.services  # ... but the registry (timed below)
        started = time.perf_counter()
        resources = Translator(fresh).translate(proxy)
        times.append(time.perf_counter() - started)
    sizes = {t.rsplit(".", 1)[-1]: len(r) for t, r in resources.items()}
    wire = sum(len(p.value) for r in resources.values() for p in r.values())
    started = time.perf_counter()
    World(world.config, world.proxies).services  # noqa: B018
    registry = time.perf_counter() - started
    # A push: one fresh world, one sidecar in each of the 10 namespaces (each namespace is
    # one shared view; more sidecars per namespace reuse it).
    one_per_namespace = {p.namespace: p for p in world.proxies}.values()
    pushes = []
    for _ in range(runs):
        fresh = World(world.config, world.proxies)
        fresh.__dict__["services"] = world.services
        started = time.perf_counter()
        translator = Translator(fresh)
        for each in one_per_namespace:
            translator.translate(each)
        pushes.append(time.perf_counter() - started)
    return {
        "push_ms": statistics.median(pushes) * 1000,
        "first_ms": times[0] * 1000,
        "median_ms": statistics.median(times) * 1000,
        "min_ms": min(times) * 1000,
        "registry_ms": registry * 1000,
        "bytes": wire,
        **sizes,
    }


def measure_edits(count: int, runs: int, full: bool = False) -> dict[str, float]:
    """Server work after an edit, with the outputs of the previous push at hand (as the
    server keeps them): translation for one sidecar after one VirtualService changed,
    and after one workload joined (an endpoint change)."""
    world = build_world(count, full)
    heap.settle()
    proxy = world.proxies[0]
    cache = CrossPushCache()
    world = World(world.config, world.proxies, 1, cache)
    translator = Translator(world)
    translator.translate(proxy)
    vs_times, endpoint_times = [], []
    for run in range(runs):
        # One VirtualService edited: a new config sharing every other resource object.
        index = next(
            i
            for i, r in enumerate(world.config.resources)
            if r.kind == model.VIRTUAL_SERVICE and r.name == f"svc-{run % count}"
        )
        edited = world.config.resources[index]
        text = (TEMPLATE % {"i": run % count, "ns": run % count % 10}).split("---\n")[-1]
        text = text.replace("weight: 90", f"weight: {80 - run}").replace(
            "weight: 10", f"weight: {20 + run}"
        )
        (new_vs,) = parse_file(edited.origin.file, text).resources
        resources = list(world.config.resources)
        resources[index] = new_vs
        # Derived from the previous snapshot, as the store derives it (so it knows what
        # came and went), and indexed by kind, as the store's checks leave it.
        config = world.config.evolve(tuple(resources), [edited], [new_vs], world.config.mesh)
        config.of_kind(model.SERVICE)
        started = time.perf_counter()
        cache.next_round()
        world = World(config, world.proxies, world.generation + 1, cache)
        translator = Translator.after_config_change(translator, world)
        translator.translate(proxy)
        vs_times.append(time.perf_counter() - started)
        # One workload joins: an endpoint change.
        joined = model.Proxy(
            f"joined-{run}",
            namespace="ns-0",
            labels={"app": "svc-0", "version": "v1"},
            ip=f"10.250.0.{run + 1}",
            ports=(model.WorkloadPort(8080, 15006),),
        )
        started = time.perf_counter()
        cache.endpoint_round()
        world = World(config, (*world.proxies, joined), world.generation + 1, cache)
        translator = Translator.after_endpoint_change(translator, world)
        translator.translate(proxy)
        endpoint_times.append(time.perf_counter() - started)
    return {
        "vs_edit_ms": statistics.median(vs_times) * 1000,
        "endpoint_ms": statistics.median(endpoint_times) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="full DestinationRules and VSs")
    args = parser.parse_args()
    print(
        f"{'services':>8} {'first ms':>9} {'translate ms':>13} {'(min)':>8} {'push 10 ns':>11} "
        f"{'registry ms':>12} {'clusters':>9} {'CLAs':>6} {'vhosts':>7} {'bytes':>10}"
    )
    for count in (int(s) for s in args.sizes.split(",")):
        r = measure(count, args.runs, args.full)
        print(
            f"{count:>8} {r['first_ms']:>9.1f} {r['median_ms']:>13.1f} {r['min_ms']:>8.1f} "
            f"{r['push_ms']:>11.1f} "
            f"{r['registry_ms']:>12.1f} {r['Cluster']:>9} {r['ClusterLoadAssignment']:>6} "
            f"{count:>7} {r['bytes']:>10}"
        )
    print(f"\n{'services':>8} {'one VS edited ms':>17} {'one endpoint ms':>16}  (one sidecar)")
    for count in (int(s) for s in args.sizes.split(",")):
        r = measure_edits(count, args.runs, args.full)
        print(f"{count:>8} {r['vs_edit_ms']:>17.1f} {r['endpoint_ms']:>16.1f}")
    print(
        "\nTelemetry (off: metrics disabled by a Telemetry; metrics: Istio's default; "
        "full: metrics, access logs and tracing on every listener)"
    )
    print(
        f"{'services':>8} {'telemetry':>10} {'translate ms':>13} {'push 10 ns':>11} {'vs off':>7}"
    )
    for count in (int(s) for s in args.sizes.split(",")):
        base = None
        for mode in ("off", "metrics", "full"):
            r = measure(count, args.runs, args.full, mode)
            base = base or r
            change = (r["push_ms"] / base["push_ms"] - 1) * 100
            print(
                f"{count:>8} {mode:>10} {r['median_ms']:>13.1f} {r['push_ms']:>11.1f} "
                f"{change:>+6.1f}%"
            )


if __name__ == "__main__":
    main()
