"""Incremental translation equals a cold one, byte for byte, after any sequence of
workloads joining and leaving and config edits."""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import config_from, plain_service_yaml, routes_to, service_yaml, sidecar
from translators import model, routes
from translators.cache import CrossPushCache
from translators.resources import CLUSTER, ENDPOINT, ROUTE
from translators.snapshot import Translator, World
from xds_server.config.cross_checks import dangling_after, dangling_subsets

SERVICES = ("reviews", "ratings", "details", "productpage")
BASE = service_yaml(*SERVICES)
TCP = (
    "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: other}\n"
    "spec:\n  selector: {app: db}\n  ports: [{name: tcp, port: 5432}]\n"
)
OTHER_RULE = (
    "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n"
    "metadata: {name: hash, namespace: other}\n"
    "spec:\n  host: ratings.default.svc.cluster.local\n"
    "  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}\n"
)
WILDCARD_VS = (
    "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n"
    "metadata: {name: everything}\n"
    "spec:\n  hosts: ['*.default.svc.cluster.local']\n  http:\n"
    "  - route: [{destination: {host: details, subset: v1}}]\n"
)
UNBOUND_VS = (
    "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n"
    "metadata: {name: outside}\n"
    "spec:\n  hosts: [api.example.com]\n  http:\n"
    "  - route: [{destination: {host: ratings}}]\n"
)
GATEWAY_VS = (
    "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n"
    "metadata: {name: edge}\n"
    "spec:\n  hosts: [ratings]\n  gateways: [edge-gateway]\n  http:\n"
    "  - route: [{destination: {host: ratings, subset: v2}}]\n"
)
NAMESPACE_VS = (
    "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n"
    "metadata: {name: by-source, namespace: other}\n"
    "spec:\n  hosts: [productpage.default.svc.cluster.local]\n  http:\n"
    "  - match: [{sourceNamespace: other}]\n"
    "    route: [{destination: {host: productpage.default.svc.cluster.local, subset: v2}}]\n"
    "  - route: [{destination: {host: productpage.default.svc.cluster.local, subset: v1}}]\n"
)
_BASE = config_from(BASE)


def _with(*texts: str) -> model.MeshConfig:
    """The base config's very objects plus more, as the store shares unchanged files."""
    extra = config_from(*texts).resources if texts else ()
    return model.MeshConfig(resources=(*_BASE.resources, *extra))


CONFIGS = [
    _BASE,
    _with(OTHER_RULE),
    _with(routes_to("v1", "v2")),
    _with(routes_to("v3"), TCP, OTHER_RULE),
    config_from(plain_service_yaml(*SERVICES)),
    # VirtualService-only edits, which views take in place (Translator.after_config_change).
    _with(routes_to("v2")),
    _with(routes_to("v1", "v3"), WILDCARD_VS),
    _with(WILDCARD_VS),
    _with(UNBOUND_VS, routes_to("v2")),
    _with(GATEWAY_VS, routes_to("v1", "v2")),
    _with(NAMESPACE_VS, routes_to("v2")),
    _with(NAMESPACE_VS),
]
CLIENTS = [
    sidecar("client-default", "client"),
    sidecar("client-other", "client", namespace="other", ip="127.0.0.3"),
]


def workload(i: int) -> model.Proxy:
    app = SERVICES[i % len(SERVICES)]
    namespace = "other" if app == "details" and i % 2 else "default"
    return sidecar(f"{app}-{i}", app, f"v{1 + i % 3}", ip=f"127.0.1.{i}", namespace=namespace)


def hashes(translator: Translator, proxies) -> dict:
    return {
        p.node_id: {
            t: {n: r.hash for n, r in res.items()} for t, res in translator.translate(p).items()
        }
        for p in proxies
    }


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["join", "leave", "config"]), st.integers(0, 9)), max_size=12
    )
)
def test_incremental_equals_cold(steps) -> None:
    config = CONFIGS[0]
    joined: dict[str, model.Proxy] = {}
    cache = CrossPushCache()  # kept across pushes, as the server keeps it
    translator = Translator(World(config, (), cache=cache))
    hashes(translator, CLIENTS)  # views built, as a live server has them
    for action, n in steps:
        if action == "join":
            proxy = workload(n)
            joined[proxy.node_id] = proxy
        elif action == "leave" and joined:
            joined.pop(sorted(joined)[n % len(joined)])
        elif action == "config":
            config = CONFIGS[n % len(CONFIGS)]
        same_config = config is translator.world.config
        if same_config:  # as the server does (mesh_state)
            cache.endpoint_round()
        else:
            cache.next_round()
        world = World(config, tuple(sorted(joined.values(), key=lambda p: p.node_id)), cache=cache)
        if same_config:
            translator = Translator.after_endpoint_change(translator, world)
        else:
            translator = Translator.after_config_change(translator, world)
        proxies = [*CLIENTS, *joined.values()]
        cold = Translator(World(config, world.proxies))
        assert hashes(translator, proxies) == hashes(cold, proxies)


def test_a_config_edit_reuses_what_it_did_not_touch() -> None:
    cache = CrossPushCache()
    first = Translator(World(CONFIGS[0], (), cache=cache))
    hashes(first, CLIENTS)
    cache.next_round()
    hits = cache.hits
    edited = Translator(World(CONFIGS[2], (), cache=cache))  # one VirtualService more
    assert hashes(edited, CLIENTS) == hashes(Translator(World(CONFIGS[2], ())), CLIENTS)
    assert cache.hits - hits >= len(SERVICES)  # every service's clusters came from before


def test_an_endpoint_change_rebuilds_only_the_assignments_it_touches() -> None:
    config = config_from(BASE)
    before = Translator(World(config, ()))
    first = before.translate(CLIENTS[0])
    reviews = workload(0)
    after = Translator.after_endpoint_change(before, World(config, (reviews,)))
    second = after.translate(CLIENTS[0])
    assert second[ROUTE] is first[ROUTE]  # routes do not depend on endpoints
    assert second[CLUSTER]._base is first[CLUSTER]._base  # nor do EDS clusters
    changed = {n for n in second[ENDPOINT] if second[ENDPOINT][n].hash != first[ENDPOINT][n].hash}
    assert changed and all("reviews" in n for n in changed)


def test_a_route_configuration_joined_from_cached_parts_is_what_protobuf_writes() -> None:
    translator = Translator(World(_with(routes_to("v1", "v2"), OTHER_RULE), ()))
    for proxy in CLIENTS:
        packed = translator.translate(proxy)[ROUTE]["http_proxy"]
        message = route_pb2.RouteConfiguration.FromString(packed.value)
        assert len(message.virtual_hosts) > len(SERVICES)
        assert message.SerializeToString(deterministic=True) == packed.value


def test_a_virtual_service_edit_rebuilds_only_the_virtual_hosts_of_its_host(monkeypatch) -> None:
    names = [f"svc-{i}" for i in range(100)]
    base = config_from(service_yaml(*names), *(routes_to("v1", name=n, host=n) for n in names))
    proxies = (sidecar("client-default", "client"),)
    cache = CrossPushCache()
    translator = Translator(World(base, proxies, cache=cache))
    first = translator.translate(proxies[0])
    built: list[tuple[str, int]] = []
    real = routes._build_routes
    monkeypatch.setattr(
        routes, "_build_routes", lambda h, p, s, c: built.append((h, p)) or real(h, p, s, c)
    )
    edited = config_from(routes_to("v2", name="svc-7", host="svc-7")).resources
    resources = [r for r in base.resources if r.ref != "VirtualService default/svc-7"]
    config = model.MeshConfig(resources=(*resources, *edited), mesh=base.mesh)
    cache.next_round()
    after = Translator.after_config_change(translator, World(config, proxies, cache=cache))
    second = after.translate(proxies[0])
    assert built == [("svc-7.default.svc.cluster.local", 9080)]
    assert second[CLUSTER]._base is first[CLUSTER]._base  # clusters untouched
    assert second[ENDPOINT] is first[ENDPOINT]
    assert second[ROUTE]["http_proxy"].hash != first[ROUTE]["http_proxy"].hash
    cold = Translator(World(config, proxies)).translate(proxies[0])
    assert {t: {n: p.hash for n, p in r.items()} for t, r in second.items()} == {
        t: {n: p.hash for n, p in r.items()} for t, r in cold.items()
    }


NARROW_RULE = (
    "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n"
    "metadata: {name: narrow, namespace: other}\n"
    "spec:\n  host: reviews.default.svc.cluster.local\n"
    "  subsets: [{name: v1, labels: {version: v1}}]\n"
)
DANGLING = [
    *CONFIGS,
    _with(routes_to("v9")),
    _with(routes_to("v2"), NARROW_RULE),
    _with(NARROW_RULE),
    config_from(plain_service_yaml(*SERVICES), routes_to("v1")),
]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, len(DANGLING) - 1), min_size=2, max_size=6))
def test_dangling_references_checked_incrementally_equal_a_full_check(order) -> None:
    previous = DANGLING[order[0]]
    findings = list(dangling_subsets(previous))
    for index in order[1:]:
        config = DANGLING[index]
        findings = dangling_after(previous, findings, config)
        full = list(dangling_subsets(config))
        assert [(f.resource.ref, f.path, f.message) for f in findings] == [
            (f.resource.ref, f.path, f.message) for f in full
        ]
        previous = config


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, len(DANGLING) - 1), min_size=2, max_size=8))
def test_dangling_references_of_derived_snapshots_equal_a_full_check(order) -> None:
    """The same, with each snapshot derived from the previous one as the store makes it
    (the check then reads what came and went from the snapshot)."""
    previous = model.MeshConfig(resources=DANGLING[order[0]].resources)
    findings = list(dangling_subsets(previous))
    for index in order[1:]:
        target = DANGLING[index].resources
        gone = [r for r in previous.resources if all(r is not t for t in target)]
        came = [r for r in target if all(r is not p for p in previous.resources)]
        config = previous.evolve(tuple(target), gone, came, previous.mesh)
        assert config.changes_since(previous) is not None
        findings = dangling_after(previous, findings, config)
        full = list(dangling_subsets(config))
        assert [(f.resource.ref, f.path, f.message) for f in findings] == [
            (f.resource.ref, f.path, f.message) for f in full
        ]
        previous = config


def test_the_dangling_configs_do_dangle() -> None:
    assert all(list(dangling_subsets(c)) for c in DANGLING[-4:-2] + DANGLING[-1:])
