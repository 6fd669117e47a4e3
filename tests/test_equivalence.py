"""Incremental translation equals a cold one, byte for byte: for the seed examples
applied one after another, and for a generated 200-service mesh under random edits of
VirtualServices, DestinationRules, Services and ServiceEntries and workloads joining and
leaving."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.golden_cases import BASE, SEED, SEEDS, _proxies
from tests.helpers import config_from, sidecar
from translators import model
from translators.cache import CrossPushCache
from translators.snapshot import Translator, World
from xds_server.config.loader import parse_file

_BASE = config_from(BASE).resources
_SEEDS = [parse_file(f"{n}.yaml", (SEED / f"{n}.yaml").read_text()).resources for n in SEEDS]
PROXIES = _proxies()
CALLER, GATEWAY, WORKLOADS = PROXIES[0], PROXIES[1], PROXIES[2:]


def hashes(translator: Translator, proxies) -> dict:
    return {
        p.node_id: {
            t: {n: r.hash for n, r in s.items()} for t, s in translator.translate(p).items()
        }
        for p in proxies
    }


class Server:
    """Pushes as the server makes them (xds_server.mesh_state): a cache kept across
    pushes, endpoint changes and config changes taking their incremental paths."""

    def __init__(self, config: model.MeshConfig, proxies: tuple = ()) -> None:
        self.cache = CrossPushCache()
        self.translator = Translator(World(config, proxies, cache=self.cache))

    def push(self, config: model.MeshConfig, proxies: tuple) -> Translator:
        previous = self.translator
        if config is previous.world.config:
            self.cache.endpoint_round()
            world = World(config, proxies, cache=self.cache)
            self.translator = Translator.after_endpoint_change(previous, world)
        else:
            self.cache.next_round()
            world = World(config, proxies, cache=self.cache)
            self.translator = Translator.after_config_change(previous, world)
        return self.translator


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.integers(0, len(SEEDS) - 1), st.sampled_from(["join", "leave"]))))
def test_seed_examples_applied_one_after_another(steps) -> None:
    configs: dict[int, model.MeshConfig] = {}
    config = model.MeshConfig(resources=_BASE)
    joined: tuple = ()
    server = Server(config)
    hashes(server.translator, (CALLER, GATEWAY))
    for step in steps:
        if step == "join":
            joined = WORKLOADS
        elif step == "leave":
            joined = ()
        else:
            config = configs.setdefault(step, model.MeshConfig(resources=(*_BASE, *_SEEDS[step])))
        translator = server.push(config, joined)
        cold = Translator(World(config, joined))
        assert hashes(translator, (CALLER, GATEWAY, *joined)) == hashes(
            cold, (CALLER, GATEWAY, *joined)
        )


SERVICE = """apiVersion: v1
kind: Service
metadata: {name: svc-%(i)d, namespace: ns-%(ns)d}
spec:
  selector: {app: svc-%(i)d}
  ports: [{name: http, port: 8080}]
"""
RULE = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: svc-%(i)d, namespace: ns-%(ns)d}
spec:
  host: svc-%(i)d
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  trafficPolicy: {loadBalancer: {simple: %(lb)s}}
"""
ROUTES = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: svc-%(i)d, namespace: ns-%(ns)d}
spec:
  hosts: [svc-%(i)d]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: svc-%(i)d, subset: v2}}]
  - route:
    - {destination: {host: svc-%(i)d, subset: v1}, weight: %(w)d}
    - {destination: {host: svc-%(i)d, subset: v2}, weight: %(rest)d}
"""
# A Service of another shape: a second HTTP port, or a TCP one.
PORTS = {
    "http": "[{name: http, port: 8080}, {name: http-admin, port: 8081}]",
    "tcp": "[{name: http, port: 8080}, {name: tcp-db, port: 5432}]",
}
RESHAPED = SERVICE.replace("[{name: http, port: 8080}]", "%(ports)s")
# A ServiceEntry: its own host, or one whose name is the short form of a Service's (its
# full name then takes that domain from the Service's virtual host).
ENTRY = """apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: entry-%(i)d, namespace: ns-%(ns)d}
spec:
  hosts: [%(host)s]
  location: MESH_EXTERNAL
  ports: [{number: %(port)d, name: %(name)s, protocol: %(protocol)s}]
  resolution: DNS
"""
COUNT = 200


def _doc(template: str, i: int, **values) -> model.ConfigResource:
    (res,) = parse_file(f"svc-{i}.yaml", template % {"i": i, "ns": i % 4, **values}).resources
    return res


MESH = {("svc", i): _doc(SERVICE, i) for i in range(COUNT)}
MESH.update({("rule", i): _doc(RULE, i, lb="ROUND_ROBIN") for i in range(COUNT)})
MESH.update({("routes", i): _doc(ROUTES, i, w=90, rest=10) for i in range(COUNT)})
CLIENTS = (
    tuple(
        sidecar(f"client-{ns}", "client", namespace=f"ns-{ns}", ip=f"127.0.3.{ns + 1}")
        for ns in range(4)
    )
    + tuple(  # captured (iptables): their own listeners follow the view's service ports
        dataclasses.replace(
            sidecar(f"captured-{ns}", "client", namespace=f"ns-{ns}", ip=f"127.0.3.{ns + 9}"),
            interception="REDIRECT",
            bind_address="0.0.0.0",
        )
        for ns in range(4)
    )
    + tuple(  # holding certificates: mutual TLS clusters, a view of their own
        dataclasses.replace(
            sidecar(f"mtls-{ns}", "client", namespace=f"ns-{ns}", ip=f"127.0.3.{ns + 17}"),
            mtls=True,
        )
        for ns in range(2)
    )
)

edit = st.one_of(
    st.tuples(st.just("routes"), st.integers(0, COUNT - 1), st.integers(0, 100)),
    st.tuples(
        st.just("rule"), st.integers(0, COUNT - 1), st.sampled_from(["RANDOM", "ROUND_ROBIN"])
    ),
    st.tuples(st.just("drop"), st.integers(0, COUNT - 1), st.just(0)),
    st.tuples(st.just("join"), st.integers(0, COUNT - 1), st.integers(1, 2)),
    st.tuples(st.just("leave"), st.integers(0, COUNT - 1), st.just(0)),
    st.tuples(st.just("reshape"), st.integers(0, COUNT - 1), st.sampled_from(sorted(PORTS))),
    st.tuples(st.just("unservice"), st.integers(0, COUNT - 1), st.just(0)),
    st.tuples(
        st.just("entry"), st.integers(0, COUNT - 1), st.sampled_from(["own", "short", "tcp"])
    ),
    st.tuples(st.just("unentry"), st.integers(0, COUNT - 1), st.just(0)),
    st.tuples(st.just("new"), st.integers(COUNT, COUNT + 20), st.integers(0, 100)),
)


def _derived(config: model.MeshConfig, resources: tuple) -> model.MeshConfig:
    """The next snapshot as the store makes it: derived from the previous one, so that it
    knows what came and went (the translator's incremental paths read that)."""
    before = {id(r) for r in config.resources}
    after = {id(r) for r in resources}
    removed = [r for r in config.resources if id(r) not in after]
    added = [r for r in resources if id(r) not in before]
    return config.evolve(resources, removed, added, config.mesh)


def _entry(i: int, shape: str) -> model.ConfigResource:
    host = f"svc-{i}.ns-{i % 4}" if shape == "short" else f"ext-{i}.example.com"
    port, name, protocol = (5433, "tcp", "TCP") if shape == "tcp" else (80, "http", "HTTP")
    return _doc(ENTRY, i, host=host, port=port, name=name, protocol=protocol)


@settings(max_examples=8, deadline=None)
@given(st.lists(edit, min_size=1, max_size=6))
def test_a_200_service_mesh_under_random_edits_and_joins(steps) -> None:
    resources = dict(MESH)
    workloads: dict[str, model.Proxy] = {}
    config = model.MeshConfig(resources=tuple(resources.values()))
    server = Server(config)
    hashes(server.translator, CLIENTS)
    for kind, i, value in steps:
        if kind == "routes":
            resources[("routes", i)] = _doc(ROUTES, i, w=value, rest=100 - value)
        elif kind == "rule":
            resources[("rule", i)] = _doc(RULE, i, lb=value)
        elif kind == "drop":
            for part in ("svc", "rule", "routes"):
                resources.pop((part, i), None)
        elif kind == "reshape":
            resources[("svc", i)] = _doc(RESHAPED, i, ports=PORTS[value])
        elif kind == "unservice":
            resources.pop(("svc", i), None)
        elif kind == "entry":
            resources[("entry", i)] = _entry(i, value)
        elif kind == "unentry":
            resources.pop(("entry", i), None)
        elif kind == "new":  # a service with its rule and routes, in one change
            resources[("svc", i)] = _doc(SERVICE, i)
            resources[("rule", i)] = _doc(RULE, i, lb="RANDOM")
            resources[("routes", i)] = _doc(ROUTES, i, w=value, rest=100 - value)
        elif kind == "join":
            proxy = sidecar(
                f"svc-{i}-v{value}",
                f"svc-{i}",
                f"v{value}",
                namespace=f"ns-{i % 4}",
                ip=f"127.0.{4 + i // 250}.{i % 250 + 1}",
            )
            if value % 2:  # captured: an endpoint at its app port
                proxy = dataclasses.replace(proxy, interception="REDIRECT")
            if value % 3 == 0:  # holds its certificate: an endpoint peers speak mTLS to
                proxy = dataclasses.replace(proxy, mtls=True)
            workloads[proxy.node_id] = proxy
        elif workloads:
            workloads.pop(sorted(workloads)[i % len(workloads)])
        if kind not in ("join", "leave"):
            config = _derived(config, tuple(resources.values()))
        proxies = tuple(sorted(workloads.values(), key=lambda p: p.node_id))
        translator = server.push(config, proxies)
        cold = Translator(World(config, proxies))
        assert hashes(translator, CLIENTS) == hashes(cold, CLIENTS)


TCP_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: %(name)s, namespace: default}
spec:
  selector: {app: %(name)s}
  ports: %(ports)s
"""
TCP_ROUTES = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db]
  tcp:
  - route: [{destination: {host: db-new}}]
"""
TCP_RULE = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: db-new, namespace: default}
spec:
  host: db-new
  trafficPolicy:
    connectionPool: {tcp: {idleTimeout: 5s}}
    loadBalancer: {consistentHash: {useSourceIp: true}}
"""


def _one(text: str) -> model.ConfigResource:
    (res,) = parse_file("tcp.yaml", text).resources
    return res


def test_a_tcp_route_follows_its_destination_s_rule_and_ports() -> None:
    """A TCP route's proxy settings come from its destination (its ports, its rule),
    even when the destination itself serves HTTP only."""
    db = _one(TCP_SERVICE % {"name": "db", "ports": "[{name: tcp, port: 5432}]"})
    target = _one(TCP_SERVICE % {"name": "db-new", "ports": "[{name: db, port: 6000}]"})
    wider = _one(
        TCP_SERVICE % {"name": "db-new", "ports": "[{name: db, port: 6000}, {name: a, port: 6001}]"}
    )
    routes = _one(TCP_ROUTES)
    for edit in (_one(TCP_RULE), wider):
        config = model.MeshConfig(resources=(db, target, routes))
        server = Server(config)
        hashes(server.translator, CLIENTS)
        resources = {r.key: r for r in config.resources}
        resources[edit.key] = edit
        config = _derived(config, tuple(resources.values()))
        cold = Translator(World(config, ()))
        assert hashes(server.push(config, ()), CLIENTS) == hashes(cold, CLIENTS)
