"""A captured sidecar's listeners (INTERCEPTION_MODE REDIRECT): which listener
virtualOutbound hands a connection to, by its original destination."""

from __future__ import annotations

import dataclasses
import ipaddress

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.udp.dns_filter.v3 import dns_filter_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import config_from, sidecar
from translators import model
from translators.listeners import (
    AUTO_ADDRESSES,
    HCM_FILTER,
    TCP_PROXY_FILTER,
    allocate_addresses,
    auto_address,
)
from translators.peer_authentication import port_modes
from translators.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from translators.snapshot import Translator, World
from xds_server.config.loader import parse_file

MESH = """apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  clusterIP: 198.19.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: mysql}
spec:
  clusterIP: 198.19.0.20
  selector: {app: mysql}
  ports: [{name: tcp, port: 3306}]
---
apiVersion: v1
kind: Service
metadata: {name: mariadb}
spec:
  selector: {app: mariadb}
  ports: [{name: tcp, port: 3306}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy}
spec:
  clusterIP: None
  selector: {app: legacy}
  ports: [{name: tcp, port: 3306}]
"""


def _listeners(text: str = MESH) -> dict[str, listener_pb2.Listener]:
    proxy = dataclasses.replace(sidecar("client", "sleep"), interception="REDIRECT")
    resources = Translator(World(config_from(text))).translate(proxy)
    out = {}
    for name, packed in resources[LISTENER].items():
        out[name] = listener = listener_pb2.Listener()
        packed.any.Unpack(listener)
    return out


def test_tcp_services_sharing_a_port_are_told_apart_by_address() -> None:
    listeners = _listeners()
    mariadb = auto_address("mariadb.default.svc.cluster.local")
    tcp = {n for n in listeners if n.endswith("_3306")}
    # A clusterIP, or the address DNS gives a Service without one; a headless Service
    # has no address of its own (its name resolves upstream, to its pods).
    assert tcp == {"198.19.0.20_3306", f"{mariadb}_3306"}
    for name, host in (("198.19.0.20_3306", "mysql"), (f"{mariadb}_3306", "mariadb")):
        listener = listeners[name]
        assert listener.address.socket_address.address == name.split("_")[0]
        assert listener.address.socket_address.port_value == 3306
        assert not listener.bind_to_port.value and listener.HasField("bind_to_port")
        (chain,) = listener.filter_chains
        assert f"outbound|3306||{host}.default.svc.cluster.local".encode() in (
            chain.filters[0].typed_config.value
        )
    # An HTTP port is one wildcard listener routing by Host; no TCP port is a wildcard.
    assert "0.0.0.0_9080" in listeners and "0.0.0.0_3306" not in listeners


def test_a_tcp_service_on_an_http_port_takes_its_address_only() -> None:
    # Envoy picks the listener matching the original destination's address before the
    # wildcard one: mysql's address goes to mysql, any other to the HTTP routes.
    listeners = _listeners(MESH.replace("{name: tcp, port: 3306}", "{name: tcp, port: 9080}"))
    assert {"0.0.0.0_9080", "198.19.0.20_9080"} <= set(listeners)


def test_a_captured_workload_serves_a_tcp_only_app_port_as_tcp() -> None:
    # Its endpoints are its app ports (15006 takes them): 3306 only TCP services reach.
    db = model.Proxy(
        node_id="db",
        labels={"app": "mysql"},
        ip="198.18.0.13",
        bind_address="0.0.0.0",
        ports=(model.WorkloadPort(3306, 3306), model.WorkloadPort(9080, 9080)),
        interception="REDIRECT",
    )
    text = MESH.replace(
        "ports: [{name: tcp, port: 3306}]",
        "ports: [{name: tcp, port: 3306}, {name: http, port: 9080}]",
        1,
    )
    resources = Translator(World(config_from(text), [db])).translate(db)
    inbound = listener_pb2.Listener()
    resources[LISTENER]["virtualInbound"].any.Unpack(inbound)
    filters = {
        c.filter_chain_match.destination_port.value: c.filters[0].name
        for c in inbound.filter_chains
    }
    assert filters[3306] == TCP_PROXY_FILTER and filters[9080] == HCM_FILTER


def test_each_http_port_has_istios_route_configuration_named_by_it() -> None:
    text = MESH.replace(
        "ports: [{name: http, port: 9080}]",
        "ports: [{name: http, port: 9080}, {name: http-alt, port: 8080}]",
        1,
    ).replace("metadata: {name: mariadb}", "metadata: {name: ratings}", 1)
    text = text.replace(
        "selector: {app: mariadb}\n  ports: [{name: tcp, port: 3306}]",
        "selector: {app: ratings}\n  ports: [{name: http, port: 9080}]",
    )
    proxy = dataclasses.replace(sidecar("client", "sleep"), interception="REDIRECT")
    resources = Translator(World(config_from(text))).translate(proxy)
    assert set(resources[ROUTE]) == {"8080", "9080"}  # no http_proxy: nothing asks for it
    configs = {}
    for name, packed in resources[ROUTE].items():
        configs[name] = config = route_pb2.RouteConfiguration()
        packed.any.Unpack(config)
        assert config.name == name
    vhosts = {
        port: {v.name: set(v.domains) for v in config.virtual_hosts}
        for port, config in configs.items()
    }
    reviews, ratings = "reviews.default.svc.cluster.local", "ratings.default.svc.cluster.local"
    assert set(vhosts["8080"]) == {f"{reviews}:8080", "allow_any"}
    assert set(vhosts["9080"]) == {f"{reviews}:9080", f"{ratings}:9080", "allow_any"}
    # On each port, reviews' vhost answers its short name (one port's in http_proxy).
    for port in ("8080", "9080"):
        assert {"reviews", f"reviews:{port}", "198.19.0.10", reviews} <= vhosts[port][
            f"{reviews}:{port}"
        ]
    # The same routes as the one configuration of an uncaptured sidecar, new domains aside.
    (packed,) = (
        Translator(World(config_from(text))).translate(sidecar("c", "sleep"))[ROUTE].values()
    )
    http_proxy = route_pb2.RouteConfiguration()
    packed.any.Unpack(http_proxy)
    for vhost in http_proxy.virtual_hosts:
        port = vhost.name.rpartition(":")[2]
        (same,) = [
            v for v in configs.get(port, configs["9080"]).virtual_hosts if v.name == vhost.name
        ]
        assert list(same.routes) == list(vhost.routes)
    hcm = hcm_pb2.HttpConnectionManager()
    _listeners(text)["0.0.0.0_8080"].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == "8080"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z]{1,8}\.ns\.svc\.cluster\.local", fullmatch=True), unique=True),
    st.sampled_from(["10.0.0.0/29", "10.0.0.0/28", AUTO_ADDRESSES]),
    st.randoms(),
)
def test_allocated_addresses_are_unique_and_depend_on_the_names_alone(hosts, network, rnd):
    allocated = allocate_addresses(hosts, network)
    shuffled = list(hosts)
    rnd.shuffle(shuffled)
    assert allocate_addresses(shuffled, network) == allocated  # the order does not matter
    room = ipaddress.ip_network(network).num_addresses - 2
    assert len(set(allocated.values())) == min(len(hosts), room)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(network) for a in allocated.values())
    if len(hosts) < room and "new.ns.svc.cluster.local" not in hosts:
        # A new host moves only hosts of the run of taken addresses its own falls in.
        more = allocate_addresses([*hosts, "new.ns.svc.cluster.local"], network)
        first = int(ipaddress.ip_network(network)[1])
        slot = int(ipaddress.ip_address(auto_address("new.ns.svc.cluster.local", network)))
        run = _run(
            {int(ipaddress.ip_address(a)) - first for a in more.values()}, slot - first, room
        )
        for host in hosts:
            if more[host] != allocated[host]:
                assert int(ipaddress.ip_address(allocated[host])) - first in run, host


def _run(taken: set[int], start: int, size: int) -> set[int]:
    """The contiguous (wrapping) run of `taken` slots around `start`."""
    run = {start}
    for step in (1, -1):
        at = (start + step) % size
        while at in taken and at not in run:
            run.add(at)
            at = (at + step) % size
    return run


def _dns_table(text: str) -> dict[str, list[str]]:
    proxy = dataclasses.replace(sidecar("client", "sleep"), interception="REDIRECT")
    resources = Translator(World(config_from(text))).translate(proxy)
    listener = listener_pb2.Listener()
    resources[LISTENER]["dns"].any.Unpack(listener)
    config = dns_filter_pb2.DnsFilterConfig()
    listener.listener_filters[0].typed_config.Unpack(config)
    table = config.server_config.inline_dns_table.virtual_domains
    return {d.name: list(d.endpoint.address_list.address) for d in table}


def test_the_mesh_config_sets_the_range_addresses_are_allocated_from() -> None:
    mesh = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
        "data:\n  mesh: |\n    autoAllocateRange: 10.99.0.0/24\n"
    )
    table = _dns_table(MESH + "---\n" + mesh)
    (mariadb,) = table["mariadb"]
    assert ipaddress.ip_address(mariadb) in ipaddress.ip_network("10.99.0.0/24")
    assert table["mysql"] == ["198.19.0.20"] and "legacy" not in table  # own, headless
    assert _dns_table(MESH)["mariadb"] == [auto_address("mariadb.default.svc.cluster.local")]
    bad = parse_file("mesh.yaml", mesh.replace("10.99.0.0/24", "10.99.0.1/24"))
    (issue,) = [i for i in bad.issues if i.severity == "error"]
    assert (issue.line, issue.field) == (6, "data.mesh.autoAllocateRange"), issue


def test_no_address_is_made_up_for_hosts_an_app_reaches_by_their_own() -> None:
    # resolution NONE, or network addresses: the name resolves upstream to where the app
    # means to go, which an allocated address could not stand for (as in Istio).
    entries = """apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: passthrough}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: ranges}
spec:
  hosts: [legacy.example.com]
  addresses: [10.5.0.0/24]
  ports: [{number: 7000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.5.0.7}]
"""
    table = _dns_table(MESH + "---\n" + entries)
    assert "db.example.com" not in table and "legacy.example.com" not in table
    names = set(_listeners(MESH + "---\n" + entries))
    assert not any(n.endswith(("_5432", "_7000")) for n in names)


def test_a_proxy_holding_its_certificate_speaks_mutual_tls_on_http_ports() -> None:
    reviews = model.Proxy(
        node_id="reviews-v1",
        labels={"app": "reviews"},
        ip="127.0.5.2",
        bind_address="127.0.5.2",
        ports=(model.WorkloadPort(9080, 15006),),
        mtls=True,
    )
    caller = dataclasses.replace(sidecar("sleep", "sleep", ip="127.0.5.1"), mtls=True)
    plain = sidecar("plain", "sleep", ip="127.0.5.3")
    translator = Translator(World(config_from(MESH), [reviews]))
    resources = {p.node_id: translator.translate(p) for p in (caller, plain, reviews)}
    name = "outbound|9080||reviews.default.svc.cluster.local"

    def cluster(node_id: str) -> cluster_pb2.Cluster:
        found = cluster_pb2.Cluster()
        resources[node_id][CLUSTER][name].any.Unpack(found)
        return found

    # A caller with a certificate: TLS to endpoints that hold one, plaintext to others;
    # one without keeps plain clusters (it could never load the secrets they name).
    assert [m.name for m in cluster("sleep").transport_socket_matches] == [
        "tlsMode-istio",
        "tlsMode-disabled",
    ]
    assert not cluster("plain").transport_socket_matches
    assignment = endpoint_pb2.ClusterLoadAssignment()
    resources["sleep"][ENDPOINT][name].any.Unpack(assignment)
    (endpoint,) = assignment.endpoints[0].lb_endpoints
    assert endpoint.metadata.filter_metadata["envoy.transport_socket_match"]["tlsMode"] == "istio"
    # The callee: PERMISSIVE, a TLS twin (client certificate required) before plaintext.
    inbound = listener_pb2.Listener()
    resources["reviews-v1"][LISTENER]["127.0.5.2_15006"].any.Unpack(inbound)
    assert [f.name for f in inbound.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    tls, plaintext = inbound.filter_chains
    assert tls.filter_chain_match.transport_protocol == "tls"
    assert "istio" in tls.filter_chain_match.application_protocols
    assert tls.transport_socket.name == "envoy.transport_sockets.tls"
    assert (
        not plaintext.HasField("transport_socket")
        and not plaintext.filter_chain_match.transport_protocol
    )


def test_peer_authentication_precedence_is_istios() -> None:
    def policy(name: str, namespace: str, spec: str) -> str:
        return (
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
        )

    config = config_from(
        policy("mesh", "istio-system", "{mtls: {mode: STRICT}}")
        + policy("ns", "prod", "{mtls: {mode: PERMISSIVE}}")
        + policy("unset", "dev", "{mtls: {}}")
        + policy(
            "app",
            "prod",
            "{selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}, "
            "portLevelMtls: {8080: {mode: PERMISSIVE}, 9090: {}}}",
        )
    )
    modes = port_modes
    assert modes(config, "default", {}, (80,)) == {80: "STRICT"}  # the mesh's
    assert modes(config, "dev", {}, (80,)) == {80: "STRICT"}  # UNSET inherits
    assert modes(config, "prod", {"app": "web"}, (80,)) == {80: "PERMISSIVE"}  # namespace
    assert modes(config, "prod", {"app": "db"}, (80, 8080, 9090)) == {
        80: "STRICT",  # the workload's policy
        8080: "PERMISSIVE",  # its port-level mode
        9090: "STRICT",  # UNSET at the port: the workload's
    }
    assert modes(config_from(MESH), "default", {}, (80,)) == {80: "PERMISSIVE"}  # no policy
    plain = policy("plain", "prod", "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}")
    assert port_modes(config_from(plain), "prod", {"app": "web"}, (80,)) == {80: "DISABLE"}


def test_undeclared_ports_are_guarded_by_rbac_and_strict() -> None:
    deny = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec:
  mtls: {mode: STRICT}
"""
    proxy = dataclasses.replace(sidecar("db-1", "db"), interception="REDIRECT", mtls=True)
    out = Translator(World(config_from(deny), (proxy,))).translate(proxy)
    inbound = listener_pb2.Listener()
    out[LISTENER]["virtualInbound"].any.Unpack(inbound)
    # Plaintext to an undeclared port: refused (STRICT); mutual TLS: RBAC, then the app.
    assert inbound.default_filter_chain.name.endswith("plaintext-refused")
    twin = next(c for c in inbound.filter_chains if c.name == "virtualInbound-mtls")
    assert [f.name for f in twin.filters] == [
        "envoy.filters.network.rbac",
        "envoy.filters.network.tcp_proxy",
    ]
    assert [f.name for f in inbound.listener_filters].count(
        "envoy.filters.listener.tls_inspector"
    ) == 1
