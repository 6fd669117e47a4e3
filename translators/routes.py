"""VirtualServices and services to the outbound RouteConfiguration (Istio §1.4, §2).

One route configuration serves the sidecar's outbound HTTP proxy listener. Each service
port gets a virtual host whose domains carry explicit ":port" forms (the listener is shared
by every port, so the port in Host is what tells two ports of a service apart); the forms
without a port go to the service's default port (80 if it has one, else its first).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from google.protobuf import duration_pb2, wrappers_pb2

from protos import destination_rule_pb2 as dr_pb2
from protos import virtual_service_pb2 as vs_pb2
from translators import model
from translators.cache import CrossPushCache
from translators.destination_rules import DestinationRuleIndex
from translators.http_filters import PASSTHROUGH_CLUSTER
from translators.memo import PerObject
from translators.naming import OUTBOUND_ROUTE_NAME, fqdn, has_labels, host_matches, outbound_cluster
from translators.resources import field_bytes
from translators.route_match import is_catch_all, route_match
from translators.route_policies import (
    CORS_FILTER,
    DEFAULT_RETRY_ON,
    FAULT_FILTER,
    HeaderEdits,
    apply_rewrite,
    cors_config,
    default_retry_policy,
    direct_response,
    fault_config,
    hash_policies,
    mirror_policies,
    redirect_action,
    retry_policy,
)
from translators.services import Service
from translators.traffic_policy import effective_policy, find_subset, hashes_consistently
from translators.wire import Segment, field_value, segments, varint

__all__ = ["DEFAULT_RETRY_ON", "RouteContext", "outbound_route_config"]
ZERO = duration_pb2.Duration()
MESH_GATEWAY = "mesh"
ConsistentHash = dr_pb2.LoadBalancerSettings.ConsistentHashLB


@dataclass
class RouteContext:
    """What route translation reads, for one proxy view (namespace, labels, gateways)."""

    services: Mapping[str, Service]
    rules: DestinationRuleIndex
    proxy_ns: str
    proxy_labels: Mapping[str, str] = field(default_factory=dict)
    gateways: frozenset[str] = frozenset({MESH_GATEWAY})
    # Route lists shared between views and pushes (see routes_key); None: no sharing.
    shared: CrossPushCache | None = None
    # Names what `services` was filtered by (the Sidecar's key): views that share routes
    # must see the same services.
    scope: tuple | None = None
    _hashing: dict[tuple[str, str, int], ConsistentHash | None] = field(default_factory=dict)
    _destinations: dict[str, tuple] = field(default_factory=dict)
    _hash_fields: dict[tuple[str, str, int], bytes] = field(default_factory=dict)
    _hashing_hosts: dict[str, bool] = field(default_factory=dict)
    # Route templates by shape (see route_body): they hold names resolved in this view.
    _templates: dict[tuple, tuple] = field(default_factory=dict)
    # Objects whose ids are in keys: cached values keep them, so no id is reused.
    _kept: list = field(default_factory=list)

    def routes_key(self, host: str, port: int, source: RouteSource | None) -> tuple:
        """Everything a vhost's routes are built from, for caching them within a push and
        across pushes: the rules (by identity: unchanged files keep their objects), the
        port, the gateways, and for each destination its ports and the DestinationRule
        this view resolves it to. The proxy's namespace and labels count only when a
        match names a source namespace or labels."""
        if source is None:
            destinations: tuple[str, ...] = (host,)
            by_namespace = by_labels = False
            rules_id = 0
        else:
            destinations, by_namespace, by_labels = _source_facts(source)
            rules_id = id(source.rules)
        return (
            host,
            port,
            rules_id,
            self.scope,
            self.gateways,
            self.proxy_ns if by_namespace else None,
            tuple(sorted(self.proxy_labels.items())) if by_labels else None,
            tuple(map(self._destination, destinations)),
        )

    def rule_for(self, host: str) -> dr_pb2.DestinationRule | None:
        """The DestinationRule this view resolves `host` to (its service's namespace,
        else the proxy's, as Istio looks a host's rule up)."""
        service = self.services.get(host)
        namespace = service.namespace if service is not None else self.proxy_ns
        return self.rules.lookup(host, self.proxy_ns, namespace)

    def _destination(self, host: str) -> tuple:
        """What routes read of a destination host in this view: its port numbers (port
        inference) and its DestinationRule (consistent hashing), by identity."""
        found = self._destinations.get(host)
        if found is None:
            service = self.services.get(host)
            rule = self.rule_for(host)
            ports = service.port_numbers if service is not None else None
            found = (host, ports, id(rule))
            self._destinations[host] = found
            self._kept.append(rule)
        return found

    def consistent_hash(self, host: str, subset: str, port: int) -> ConsistentHash | None:
        """The destination's DR consistentHash (subset and port settings applied), if any."""
        key = (host, subset, port)
        if key not in self._hashing:
            rule = self.rule_for(host)
            hashing = None
            if rule is not None and hashes_consistently(rule):
                lb = effective_policy(rule, find_subset(rule, subset), port).load_balancer
                hashing = lb.consistent_hash if lb.HasField("consistent_hash") else None
            self._hashing[key] = hashing
        return self._hashing[key]

    def hash_fields(self, host: str, subset: str, port: int) -> bytes:
        """consistent_hash as RouteAction hash_policy fields (15), serialized."""
        hashes = self._hashing_hosts.get(host)
        if hashes is None:  # most hosts' rules hash nowhere: no subset or port to resolve
            rule = self.rule_for(host)
            hashes = self._hashing_hosts[host] = rule is not None and hashes_consistently(rule)
        if not hashes:
            return b""
        key = (host, subset, port)
        found = self._hash_fields.get(key)
        if found is None:
            hashing = self.consistent_hash(host, subset, port)
            found = self._hash_fields[key] = (
                b"".join(
                    field_bytes(15, policy.SerializeToString(deterministic=True))
                    for policy in hash_policies(hashing)
                )
                if hashing is not None
                else b""
            )
        return found


def gateway_ref(name: str, namespace: str) -> str:
    """A VirtualService's gateway as `ns/name` (or `mesh`): `ns/name`, Istio's deprecated
    `name.ns.svc.cluster.local`, or a bare name in the VirtualService's namespace."""
    if name == MESH_GATEWAY or "/" in name:
        return name
    if "." in name:
        gateway, ns = name.split(".")[:2]
        return f"{ns}/{gateway}"
    return f"{namespace}/{name}"


def _applies_to(
    match: vs_pb2.HTTPMatchRequest | None, port: int | None, ctx: RouteContext, vs_ns: str
) -> bool:
    """Istio's config-time filters: port, gateways, sourceLabels and sourceNamespace."""
    if match is None:
        return True
    if match.port and port is not None and match.port != port:
        return False
    if match.gateways:
        return any(gateway_ref(g, vs_ns) in ctx.gateways for g in match.gateways)
    if not has_labels(ctx.proxy_labels, match.source_labels):
        return False
    return not (match.source_namespace and match.source_namespace != ctx.proxy_ns)


def resolve_destination(
    dest: vs_pb2.Destination,
    vs_namespace: str,
    services: Mapping[str, Service],
    listener_port: int | None,
) -> tuple[str, int, str]:
    """(host, port, subset). Istio's port inference: explicit port, else the service's only
    port, else the vhost's port."""
    host = fqdn(dest.host, vs_namespace)
    return host, infer_port(host, dest.port.number, services, listener_port), dest.subset


def infer_port(
    host: str, port: int, services: Mapping[str, Service], listener_port: int | None
) -> int:
    """Istio's port inference for a destination: its port, else its service's only
    port, else the vhost's port (80 without one)."""
    if port:
        return port
    service = services.get(host)
    if service is not None and len(service.ports) == 1:
        return service.ports[0].port
    return listener_port or 80


def destination_cluster(
    dest: vs_pb2.Destination,
    vs_namespace: str,
    services: Mapping[str, Service],
    listener_port: int | None,
) -> str:
    host, port, subset = resolve_destination(dest, vs_namespace, services, listener_port)
    return outbound_cluster(port, host, subset)


# Istio lets gRPC clients' grpc-timeout header apply, uncapped, when the route has no
# timeout. Envoy 1.40 ignores the route timeout whenever max_stream_duration is set
# (measured: a 1s route timeout did not fire), so it is left out otherwise.
_UNTIMED = rc.RouteAction(
    timeout=ZERO, max_stream_duration=rc.RouteAction.MaxStreamDuration(grpc_timeout_header_max=ZERO)
)


def _forward_action(
    action: rc.RouteAction,
    rule: vs_pb2.HTTPRoute,
    vs_ns: str,
    ctx: RouteContext,
    port: int | None,
    edits: HeaderEdits,
    hashed: bool | None = None,
) -> None:
    """Fill `action` (a route's, in place: building it apart would mean copying it in).
    With `hashed` given, the destinations (cluster specifier and hash policies) are left
    out, for the byte path to splice in; `hashed` says whether they hash consistently."""
    if rule.HasField("timeout"):
        action.timeout.CopyFrom(rule.timeout)
    else:
        action.CopyFrom(_UNTIMED)
    if hashed is None:
        hashed = _destinations_into(action, rule, vs_ns, ctx, port, edits)
    retries = retry_policy(rule, hashed)
    if retries is not None:
        action.retry_policy.CopyFrom(retries)
    if rule.HasField("rewrite"):
        apply_rewrite(action, rule.rewrite)
    if edits.host_rewrite and not action.host_rewrite_literal:
        action.host_rewrite_literal = edits.host_rewrite
    action.request_mirror_policies.extend(
        mirror_policies(rule, lambda d: destination_cluster(d, vs_ns, ctx.services, port))
    )


def _destinations_into(
    action: rc.RouteAction,
    rule: vs_pb2.HTTPRoute,
    vs_ns: str,
    ctx: RouteContext,
    port: int | None,
    edits: HeaderEdits,
) -> bool:
    """The cluster (or weighted clusters) and hash policies of a forward action; whether
    its one destination hashes consistently (which turns off previous-host retries)."""
    destinations = list(rule.route)
    hashed = False
    for dest in destinations:
        if len(destinations) > 1 and dest.weight <= 0:
            continue
        host, dest_port, subset = resolve_destination(dest.destination, vs_ns, ctx.services, port)
        name = outbound_cluster(dest_port, host, subset)
        hashing = ctx.consistent_hash(host, subset, dest_port)
        if hashing is not None:
            action.hash_policy.extend(hash_policies(hashing))
            hashed = len(destinations) == 1
        if len(destinations) == 1:
            action.cluster = name
            if dest.HasField("headers"):
                edits.add(dest.headers)
            continue
        weighted = action.weighted_clusters.clusters.add(name=name)
        weighted.weight.value = dest.weight
        if dest.HasField("headers"):
            own = HeaderEdits()
            own.add(dest.headers)
            own.apply(weighted)
            if own.host_rewrite:
                weighted.host_rewrite_literal = own.host_rewrite
    return hashed


def http_route_template(
    rule: vs_pb2.HTTPRoute,
    vs_ns: str,
    ctx: RouteContext,
    port: int | None,
    hashed: bool | None = None,
) -> rc.Route:
    """Everything of one Envoy route except its name and match (and, with `hashed`
    given, its destinations: see _forward_action).
    Precedence of actions, as in Istio: redirect, then directResponse, then route."""
    route = rc.Route()
    edits = HeaderEdits()
    if rule.HasField("headers"):
        edits.add(rule.headers)
    if rule.HasField("redirect"):
        route.redirect.CopyFrom(redirect_action(rule.redirect, port))
    elif rule.HasField("direct_response"):
        route.direct_response.CopyFrom(direct_response(rule.direct_response))
    else:
        _forward_action(route.route, rule, vs_ns, ctx, port, edits, hashed)
    edits.apply(route)
    if rule.HasField("fault"):
        fault = fault_config(rule.fault)
        if fault is not None:
            route.typed_per_filter_config[FAULT_FILTER].CopyFrom(fault)
    if rule.HasField("cors_policy"):
        route.typed_per_filter_config[CORS_FILTER].CopyFrom(cors_config(rule.cors_policy))
    return route


def http_routes(
    rules: Iterable[vs_pb2.HTTPRoute], vs_ns: str, ctx: RouteContext, port: int | None
) -> list[rc.Route]:
    """http_route_bytes, as messages (for gateways, which build their virtual hosts as
    messages)."""
    return [rc.Route.FromString(route) for route in http_route_bytes(rules, vs_ns, ctx, port)]


def http_route_bytes(
    rules: Iterable[vs_pb2.HTTPRoute], vs_ns: str, ctx: RouteContext, port: int | None
) -> list[bytes]:
    """One Envoy route per match entry, in order, stopping after the first catch-all;
    serialized, as a virtual host joins them."""
    routes: list[bytes] = []
    for rule in rules:
        body = None
        facts = _rule_facts(rule)
        for entry in facts.entries:
            if entry.filtered and not _applies_to(entry.match, port, ctx, vs_ns):
                continue
            if body is None:
                body = route_body(rule, vs_ns, ctx, port, facts)
            before_match, before_name, before_stat, rest = body
            routes.append(
                b"".join(
                    (
                        before_match,
                        entry.head,
                        before_name,
                        entry.name,
                        before_stat,
                        entry.stat,
                        rest,
                    )
                )
            )
            if entry.catch_all:
                return routes
    return routes


@dataclass(frozen=True, slots=True)
class _Entry:
    """One match entry of a rule, as every view sends it."""

    match: vs_pb2.HTTPMatchRequest | None
    filtered: bool  # names a port, gateways or a source: whether it applies depends on the view
    head: bytes  # the route's match (field 1)
    name: bytes  # the route's name (field 14), if any
    stat: bytes  # its stat prefix (field 19), if any
    catch_all: bool


@dataclass(frozen=True, slots=True)
class _RuleFacts:
    """What a rule's routes take from the rule alone, whatever the view."""

    entries: tuple[_Entry, ...]
    # (host as written, subset, port or 0, weight) of the destinations a forward action
    # sends to; None when the route is built whole (a redirect, a direct response, no
    # destination, or one that edits headers).
    destinations: tuple[tuple[str, str, int, int], ...] | None
    single: bool  # one destination (its weight is ignored)
    shape: bytes  # the rule without its matches, destinations and name


def _derive_facts(rule: vs_pb2.HTTPRoute) -> _RuleFacts:
    entries = []
    for match in list(rule.match) or [None]:
        name, stat = rule.name, b""
        filtered = False
        if match is not None:
            if match.name:
                name = f"{rule.name}.{match.name}" if rule.name else match.name
            if match.stat_prefix:
                stat = field_bytes(19, match.stat_prefix.encode())
            filtered = bool(
                match.port or match.gateways or match.source_labels or match.source_namespace
            )
        entries.append(
            _Entry(
                match,
                filtered,
                _match_field(match),
                field_bytes(14, name.encode()) if name else b"",
                stat,
                is_catch_all(match),
            )
        )
    routed = list(rule.route)
    destinations = None
    forward = not (rule.HasField("redirect") or rule.HasField("direct_response"))
    if forward and routed and not any(dest.HasField("headers") for dest in routed):
        destinations = tuple(
            (d.destination.host, d.destination.subset, d.destination.port.number, d.weight)
            for d in routed
            if len(routed) == 1 or d.weight > 0
        )
    shape = vs_pb2.HTTPRoute()
    shape.CopyFrom(rule)
    for field_name in ("match", "route", "name"):
        shape.ClearField(field_name)
    return _RuleFacts(
        tuple(entries), destinations, len(routed) == 1, shape.SerializeToString(deterministic=True)
    )


# Rules are kept from push to push while their file stays (the store's contract).
_rule_facts = PerObject(_derive_facts)
_MATCHES: dict[bytes, bytes] = {}


def _match_field(match: vs_pb2.HTTPMatchRequest | None) -> bytes:
    """A route's match (field 1), serialized; built once for equal Istio matches."""
    key = match.SerializeToString(deterministic=True) if match is not None else b"-"
    found = _MATCHES.get(key)
    if found is None:
        found = field_bytes(1, route_match(match).SerializeToString(deterministic=True))
        if len(_MATCHES) > 65536:
            _MATCHES.clear()
        _MATCHES[key] = found
    return found


RouteBody = tuple[bytes, bytes, bytes, bytes]


def route_body(
    rule: vs_pb2.HTTPRoute,
    vs_ns: str,
    ctx: RouteContext,
    port: int | None,
    facts: _RuleFacts | None = None,
) -> RouteBody:
    """A route without its match (field 1), name (14) and stat prefix (19), cut where
    those go. A forward rule without per-destination headers is its destinations
    spliced into a template of everything else, built once per view for every rule of
    the same shape (a mesh's VirtualServices mostly differ only in where they send)."""
    facts = facts or _rule_facts(rule)
    if facts.destinations is None:
        whole = http_route_template(rule, vs_ns, ctx, port).SerializeToString(deterministic=True)
        return _cut(segments(whole), (1, 14, 19))  # type: ignore[return-value]
    specifier, hashes, hashed = _destination_fields(facts, vs_ns, ctx, port)
    key = (facts.shape, vs_ns, port, hashed)
    template = ctx._templates.get(key)
    if template is None:
        route = http_route_template(rule, vs_ns, ctx, port, hashed)
        action = segments(route.route.SerializeToString(deterministic=True))
        route.ClearField("route")
        outer = segments(route.SerializeToString(deterministic=True))
        template = ctx._templates[key] = (_cut(outer, (1, 2, 14, 19)), _cut(action, (1, 3, 15)))
    (before_match, before_action, before_name, before_stat, rest), action_parts = template
    first, after_cluster, after_weighted, after_hashes = action_parts
    cluster, weighted = (specifier, b"") if specifier[:1] == _CLUSTER_TAG else (b"", specifier)
    action = b"".join(
        (first, cluster, after_cluster, weighted, after_weighted, hashes, after_hashes)
    )
    return (
        before_match,
        b"".join((before_action, field_bytes(2, action), before_name)),
        before_stat,
        rest,
    )


_CLUSTER_TAG = field_bytes(1, b"")[:1]


def _cut(parts: list[Segment], numbers: tuple[int, ...]) -> tuple[bytes, ...]:
    """A message's fields (in field-number order) as len(numbers) + 1 runs of bytes: the
    fields below numbers[0], those from numbers[0] below numbers[1], and so on."""
    runs: list[list[bytes]] = [[] for _ in range(len(numbers) + 1)]
    for number, data in parts:
        runs[sum(number >= n for n in numbers)].append(data)
    return tuple(b"".join(run) for run in runs)


def _destination_fields(
    facts: _RuleFacts, vs_ns: str, ctx: RouteContext, port: int | None
) -> tuple[bytes, bytes, bool]:
    """What _destinations_into writes, serialized: the cluster specifier (cluster, field
    1, or weighted_clusters, field 3), the hash policies (field 15), and whether the one
    destination hashes consistently."""
    hashes: list[bytes] = []
    weighted: list[bytes] = []
    specifier = b""
    hashed = False
    for raw_host, subset, written_port, weight in facts.destinations or ():
        host = fqdn(raw_host, vs_ns)
        dest_port = infer_port(host, written_port, ctx.services, port)
        name = outbound_cluster(dest_port, host, subset).encode()
        policies = ctx.hash_fields(host, subset, dest_port)
        if policies:
            hashes.append(policies)
            hashed = facts.single
        if facts.single:
            specifier = field_bytes(1, name)
        else:  # ClusterWeight{name: 1, weight: 2 (UInt32Value{value: 1})}
            weighted.append(
                field_bytes(1, field_bytes(1, name) + field_bytes(2, b"\x08" + varint(weight)))
            )
    if weighted:
        specifier = field_bytes(3, b"".join(weighted))
    return specifier, b"".join(hashes), hashed


def virtual_service_routes(
    vs: model.ConfigResource, ctx: RouteContext, port: int | None
) -> list[bytes]:
    return http_route_bytes(vs.spec.http, vs.namespace, ctx, port)


def default_route(host: str, port: int, ctx: RouteContext) -> bytes:
    """A service port without a VirtualService: everything to its cluster (Istio §2.11)."""
    hashing = ctx.consistent_hash(host, "", port)
    if hashing is None:  # the common case: the same route but for the cluster's name
        (before_action, rest), (before_cluster, after_cluster) = _UNHASHED_DEFAULT
        cluster = field_bytes(1, outbound_cluster(port, host).encode())
        action = b"".join((before_cluster, cluster, after_cluster))
        return b"".join((before_action, field_bytes(2, action), rest))
    return _default_route(outbound_cluster(port, host), hashing).SerializeToString(
        deterministic=True
    )


def _default_route(cluster: str, hashing: ConsistentHash | None) -> rc.Route:
    """Everything to `cluster`, with Istio's default retries and the hash policy."""
    action = rc.RouteAction(
        cluster=cluster,
        timeout=ZERO,
        retry_policy=default_retry_policy(hashed=hashing is not None),
        max_stream_duration=rc.RouteAction.MaxStreamDuration(grpc_timeout_header_max=ZERO),
    )
    if hashing is not None:
        action.hash_policy.extend(hash_policies(hashing))
    return rc.Route(
        name="default",
        match=rc.RouteMatch(prefix="/", case_sensitive=wrappers_pb2.BoolValue(value=True)),
        route=action,
    )


def _default_template() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The unhashed default route cut where its action goes, and its action cut where
    the cluster goes."""
    route = _default_route("", None)
    route.route.ClearField("cluster")  # set, even empty: it is a oneof member
    action = segments(route.route.SerializeToString(deterministic=True))
    route.ClearField("route")
    return _cut(segments(route.SerializeToString(deterministic=True)), (2,)), _cut(action, (1,))


_UNHASHED_DEFAULT = _default_template()


def catch_all_vhost(allow_any: bool) -> rc.VirtualHost:
    """Hosts outside the registry: passed through (ALLOW_ANY) or refused with 502."""
    match = rc.RouteMatch(prefix="/")
    if allow_any:
        route = rc.Route(
            name="allow_any",
            match=match,
            route=rc.RouteAction(
                cluster=PASSTHROUGH_CLUSTER,
                timeout=ZERO,
                max_stream_duration=rc.RouteAction.MaxStreamDuration(grpc_timeout_header_max=ZERO),
            ),
        )
        return rc.VirtualHost(name="allow_any", domains=["*"], routes=[route])
    route = rc.Route(
        name="block_all", match=match, direct_response=rc.DirectResponseAction(status=502)
    )
    return rc.VirtualHost(name="block_all", domains=["*"], routes=[route])


@dataclass
class _VHost:
    name: str
    routes: list[bytes]
    domains: list[tuple[int, str]]  # (priority, domain); priority 0 = full names, claimed first


def service_domains(
    service: Service, port: int, proxy_ns: str, every_port: bool = False
) -> list[tuple[int, str]]:
    """The (priority, domain) forms a view's virtual host for one service port wants;
    remembered per service (kept from push to push while it stays the same). In the one
    route configuration of all ports, the names without a port go to the service's
    default port; `every_port` wants them for each port, as a configuration of one port
    has them (port_route_configs)."""
    forms = _domain_forms(service)
    key = (port, service.namespace == proxy_ns, every_port)
    found = forms.get(key)
    if found is None:
        found = forms[key] = _service_domains(service, port, proxy_ns, every_port)
    return found


_domain_forms = PerObject(lambda service: {})


def _service_domains(
    service: Service, port: int, proxy_ns: str, every_port: bool
) -> list[tuple[int, str]]:
    names: list[tuple[int, str]] = [(0, service.hostname), (0, service.hostname + ".")]
    if service.short_name:
        ns_name = f"{service.short_name}.{service.namespace}"
        names += [(1, ns_name), (1, f"{ns_name}.svc")]
        if service.namespace == proxy_ns:
            names.append((1, service.short_name))
    names += [(0, vip) for vip in service.vips]
    with_port = [(prio, f"{name}:{port}") for prio, name in names]
    if every_port or port == service.default_port.port:
        return names + with_port
    return with_port


@dataclass(frozen=True)
class RouteSource:
    """HTTP rules that own a host: a VirtualService's, or ones made from a TrafficSplit or
    ServiceProfile. Short names in destinations are relative to `namespace`."""

    namespace: str
    rules: Sequence[vs_pb2.HTTPRoute]
    ref: str


def is_sidecar_virtual_service(vs: model.ConfigResource) -> bool:
    """Bound to sidecars: no `gateways`, or one that names `mesh`."""
    return not vs.spec.gateways or MESH_GATEWAY in vs.spec.gateways


def sidecar_virtual_services(config: model.MeshConfig) -> list[model.ConfigResource]:
    """VirtualServices bound to sidecars."""
    return [vs for vs in config.of_kind(model.VIRTUAL_SERVICE) if is_sidecar_virtual_service(vs)]


class Bindings:
    """Which VirtualService owns a host: exact names first, else the most specific
    wildcard; the oldest wins a tie, as Istio does for sidecars. Built once per config."""

    def __init__(self, virtual_services: Sequence[model.ConfigResource]) -> None:
        self.hosts: list[tuple[str, model.ConfigResource]] = [
            (host, vs) for vs in virtual_services for host in vs_hosts(vs)
        ]
        self.exact: dict[str, model.ConfigResource] = {}
        for host, vs in self.hosts:
            self.exact.setdefault(host, vs)
        self.wildcards = [(h, vs) for h, vs in self.hosts if "*" in h]

    @classmethod
    def after(
        cls,
        previous: Bindings,
        virtual_services: Sequence[model.ConfigResource],
        removed: Sequence[model.ConfigResource],
        added: Sequence[model.ConfigResource],
    ) -> Bindings:
        """The bindings of `virtual_services`, which are `previous`'s less `removed`
        plus `added`: only the hosts those name get their owner again."""
        out = cls.__new__(cls)
        out.hosts = [(host, vs) for vs in virtual_services for host in vs_hosts(vs)]
        touched = {host for vs in (*removed, *added) for host in vs_hosts(vs)}
        exact = dict(previous.exact)
        for host in touched:
            exact.pop(host, None)
        for host, vs in out.hosts if touched else ():
            if host in touched and host not in exact:  # the first in config order wins
                exact[host] = vs
        out.exact = exact
        out.wildcards = [(h, vs) for h, vs in out.hosts if "*" in h]
        known = previous.__dict__.get("_by_destination")
        if known is not None:
            gone = {id(vs) for vs in removed}
            index = dict(known)
            for vs in removed:
                for target in _source_facts(_source(vs))[0]:
                    index[target] = [e for e in index.get(target, ()) if id(e[1]) not in gone]
            for vs in added:
                for target in _source_facts(_source(vs))[0]:
                    index[target] = [*index.get(target, ()), *((h, vs) for h in vs_hosts(vs))]
            out.__dict__["_by_destination"] = index
        return out

    def owner(self, host: str, service_hosts: Collection[str]) -> model.ConfigResource | None:
        """The owner of service host `host` among `service_hosts` (a VS host that is a
        service itself names only that service, never others by its wildcard)."""
        found = self.exact.get(host)
        if found is not None:
            return found
        best: tuple[int, model.ConfigResource] | None = None
        for pattern, vs in self.wildcards:
            if pattern in service_hosts or not host_matches(pattern, host):
                continue
            if best is None or len(pattern) > best[0]:
                best = (len(pattern), vs)
        return best[1] if best is not None else None

    def names(self, host: str) -> bool:
        """Whether a VirtualService names `host`, exactly or by a wildcard."""
        return host in self.exact or any(host_matches(p, host) for p, _ in self.wildcards)

    def routing_to(self, targets: set[str], services: Collection[str]) -> set[str] | None:
        """The service hosts whose VirtualService sends traffic (routes or mirrors) to
        one of `targets`; None when such a VirtualService owns hosts by a wildcard."""
        found: set[str] = set()
        for target in targets:
            for host, vs in self._by_destination.get(target, ()):
                if "*" in host:
                    return None
                if host in services and self.owner(host, services) is vs:
                    found.add(host)
        return found

    @cached_property
    def tcp_destinations(self) -> frozenset[str]:
        """Every host a sidecar VirtualService's `tcp` routes send to: their ports decide
        the cluster, their rules the TCP proxy's settings."""
        unique = {id(vs): vs for _, vs in self.hosts}.values()
        return frozenset(
            fqdn(route.destination.host, vs.namespace)
            for vs in unique
            for rule in vs.spec.tcp
            for route in rule.route
        )

    @cached_property
    def _by_destination(self) -> dict[str, list[tuple[str, model.ConfigResource]]]:
        out: dict[str, list[tuple[str, model.ConfigResource]]] = {}
        for host, vs in self.hosts:
            for target in _source_facts(_source(vs))[0]:
                out.setdefault(target, []).append((host, vs))
        return out

    def bind(self, services: Iterable[str]):
        """Each service host -> its owner; plus the VS hosts that name no service."""
        service_hosts = services if isinstance(services, Collection) else set(services)
        owner = {}
        for host in service_hosts:
            found = self.owner(host, service_hosts)
            if found is not None:
                owner[host] = found
        unbound = [
            (host, vs)
            for host, vs in self.hosts
            if host not in service_hosts
            and not ("*" in host and any(host_matches(host, s) for s in service_hosts))
        ]
        return owner, unbound


def bind_hosts(virtual_services: Sequence[model.ConfigResource], services: Iterable[str]):
    """Each service host -> the VirtualService that owns it; plus the VS hosts that name
    no service (see Bindings)."""
    return Bindings(virtual_services).bind(services)


@PerObject
def vs_hosts(vs: model.ConfigResource) -> list[str]:
    """A VirtualService's hosts as full names."""
    return [fqdn(raw, vs.namespace) for raw in vs.spec.hosts]


# A VirtualService's rules as a route source; kept with the VirtualService.
_source = PerObject(lambda vs: RouteSource(vs.namespace, vs.spec.http, vs.ref))


def claim_domains(
    vhosts: Sequence[_VHost], contested: set[str] | None = None
) -> list[tuple[str, tuple[str, ...], list[bytes]]]:
    """Envoy refuses a domain used twice; the first claim wins, full names before short
    forms. Returns (name, domains, routes) per virtual host, sorted by name; adds the
    domains more than one virtual host wanted to `contested`."""
    vhosts = list({v.name: v for v in reversed(vhosts)}.values())[::-1]  # one per name
    wanted = [_in_priority_order(v.domains) for v in vhosts]
    if len(set(chain.from_iterable(wanted))) == sum(map(len, wanted)):
        # No domain is wanted twice (the common case): each gets all it wants.
        return sorted(
            (v.name, domains, v.routes)
            for v, domains in zip(vhosts, wanted, strict=True)
            if domains
        )
    return claim_each(vhosts, contested)


def claim_each(
    vhosts: Sequence[_VHost], contested: set[str] | None = None
) -> list[tuple[str, tuple[str, ...], list[bytes]]]:
    """claim_domains, one domain at a time (for one virtual host per name)."""
    claimed: dict[str, str] = {}
    chosen: dict[str, list[str]] = {v.name: [] for v in vhosts}
    later: list[tuple[str, str]] = []  # short forms, claimed after every full name
    for vhost in vhosts:
        name = vhost.name
        for priority, domain in vhost.domains:
            if priority:
                later.append((name, domain))
            else:
                _claim(name, domain, claimed, chosen, contested)
    for name, domain in later:
        _claim(name, domain, claimed, chosen, contested)
    return [
        (v.name, tuple(chosen[v.name]), v.routes)
        for v in sorted(vhosts, key=lambda v: v.name)
        if chosen[v.name]
    ]


def _ordered(wanted: Sequence[tuple[int, str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(domain for _, domain in sorted(wanted, key=_priority)))


# A vhost's wanted (priority, domain) forms as the domains it gets when no other wants
# them: full names first, each once. Service domain forms are kept per service.
_in_priority_order = PerObject(_ordered)


def _claim(
    name: str,
    domain: str,
    claimed: dict[str, str],
    chosen: dict[str, list[str]],
    contested: set[str] | None,
) -> None:
    owner = claimed.setdefault(domain, name)
    if owner == name:
        if domain not in chosen[name]:
            chosen[name].append(domain)
    elif contested is not None:
        contested.add(domain)


_ATTEMPT_COUNT = b"\x70\x01"  # include_request_attempt_count (field 14): true


def _vhost_field(
    name: str, domains: tuple[str, ...], routes: list[bytes], cache: CrossPushCache | None
) -> bytes:
    """One VirtualHost, serialized as a RouteConfiguration field; kept across pushes
    while its routes are the same."""
    key = ("vhost", name, domains, id(routes))
    found = cache.get(key) if cache is not None else None
    if found is not None:
        return found[1]
    # VirtualHost{name: 1, domains: 2, routes: 3, include_request_attempt_count: 14}, in
    # field order as protobuf writes it, without copying the routes into a message.
    body = field_bytes(
        2,
        b"".join(
            (
                field_bytes(1, name.encode()),
                _domain_fields(domains),
                *(field_bytes(3, route) for route in routes),
                _ATTEMPT_COUNT,
            )
        ),
    )
    if cache is not None:
        cache.put(key, (routes, body))  # holds the routes: their id stays theirs
    return body


_DOMAIN_FIELDS: dict[tuple[str, ...], bytes] = {}


def _domain_fields(domains: tuple[str, ...]) -> bytes:
    """VirtualHost.domains (field 2) serialized; built once per set of domains."""
    found = _DOMAIN_FIELDS.get(domains)
    if found is None:
        found = b"".join(field_bytes(2, domain.encode()) for domain in domains)
        if len(_DOMAIN_FIELDS) > 65536:
            _DOMAIN_FIELDS.clear()
        _DOMAIN_FIELDS[domains] = found
    return found


@dataclass(frozen=True)
class RouteParts:
    """A view's outbound route configuration as its virtual hosts (name -> the domains
    it won, and its serialized field), so that an edit replaces a few and joins again."""

    vhosts: Mapping[str, tuple[tuple[str, ...], bytes]]  # in order
    catch_all: bytes
    has_unbound: bool  # a vhost for a VS host outside the registry
    # Domains more than one virtual host wanted (perhaps some of them since went away).
    contested: frozenset[str] = frozenset()

    @cached_property
    def claimed(self) -> dict[str, str]:
        """Every domain -> the virtual host that won it."""
        return {domain: name for name, (domains, _) in self.vhosts.items() for domain in domains}

    def serialized(self) -> bytes:
        return b"".join(
            (
                field_bytes(1, OUTBOUND_ROUTE_NAME.encode()),
                *(part for _, part in self.vhosts.values()),
                field_bytes(2, self.catch_all),
                field_bytes(7, b""),
            )
        )

    def with_routes(
        self, routes: Mapping[str, list[bytes]], cache: CrossPushCache | None
    ) -> RouteParts:
        """These vhosts with new routes: domains stay as claimed, since no domain
        changed."""
        vhosts = dict(self.vhosts)
        for name, new in routes.items():
            if name not in vhosts:
                continue  # every domain of it went to other vhosts: it is not sent
            domains = vhosts[name][0]
            vhosts[name] = (domains, _vhost_field(name, domains, new, cache))
        return self._with(vhosts, self.__dict__.get("claimed"))

    def with_services(
        self,
        gone: Iterable[str],
        added: Sequence[tuple[str, list[tuple[int, str]], list[bytes]]],
        cache: CrossPushCache | None,
    ) -> RouteParts | None:
        """These vhosts without the `gone` ones, plus `added` (name, wanted domains,
        routes), when that moves no domain between virtual hosts: no domain of a gone
        one was wanted by another, and no added one wants a domain already taken. None
        otherwise (claim them all again)."""
        claimed = dict(self.claimed)
        vhosts = dict(self.vhosts)
        for name in gone:
            domains, _ = vhosts.pop(name, ((), b""))
            if any(domain in self.contested for domain in domains):
                return None
            for domain in domains:
                del claimed[domain]
        fresh = []
        for name, wanted, routes in added:
            domains = _in_priority_order(wanted)
            if name in vhosts or any(domain in claimed for domain in domains):
                return None
            claimed.update(dict.fromkeys(domains, name))
            fresh.append((name, (domains, _vhost_field(name, domains, routes, cache))))
        return self._with(_in_order(vhosts, fresh), claimed)

    def _with(
        self, vhosts: dict[str, tuple[tuple[str, ...], bytes]], claimed: dict[str, str] | None
    ) -> RouteParts:
        parts = RouteParts(vhosts, self.catch_all, self.has_unbound, self.contested)
        if claimed is not None:
            parts.__dict__["claimed"] = claimed
        return parts


def _in_order(ordered: dict[str, Any], fresh: list[tuple[str, Any]]) -> dict[str, Any]:
    """`ordered` (sorted by name) with `fresh` items put in their places."""
    if not fresh:
        return ordered
    names = list(ordered)
    items = list(ordered.items())
    for name, value in sorted(fresh, reverse=True):
        at = bisect_left(names, name)
        names.insert(at, name)
        items.insert(at, (name, value))
    return dict(items)


def _priority(wanted: tuple[int, str]) -> int:
    return wanted[0]


def _source_facts(source: RouteSource) -> tuple[tuple[str, ...], bool, bool]:
    """(destination and mirror hosts, matches on source namespace, on source labels) of
    a source's rules; memoised per rules object."""
    rules = source.rules
    found = _FACTS.get(id(rules))
    if found is not None and found[0] is rules and found[1] == source.namespace:
        return found[2]
    hosts: set[str] = set()
    by_namespace = by_labels = False
    for rule in rules:
        targets = [d.destination for d in rule.route]
        if rule.HasField("mirror"):
            targets.append(rule.mirror)
        targets += [m.destination for m in rule.mirrors]
        hosts.update(fqdn(t.host, source.namespace) for t in targets)
        for match in rule.match:
            by_namespace = by_namespace or bool(match.source_namespace)
            by_labels = by_labels or bool(match.source_labels)
    facts = (tuple(sorted(hosts)), by_namespace, by_labels)
    if len(_FACTS) > 65536:
        _FACTS.clear()
    _FACTS[id(rules)] = (rules, source.namespace, facts)
    return facts


_FACTS: dict[int, tuple[Sequence, str, tuple[tuple[str, ...], bool, bool]]] = {}


def _vhost_routes(
    host: str, port: int, source: RouteSource | None, ctx: RouteContext
) -> list[bytes]:
    if ctx.shared is None:
        return _build_routes(host, port, source, ctx)
    key = ("routes", *ctx.routes_key(host, port, source))
    found = ctx.shared.get(key)
    if found is not None:
        return found[1]
    routes = _build_routes(host, port, source, ctx)
    # The entry holds the objects whose ids are in its key, so while it exists no other
    # object can take one of those ids.
    ctx.shared.put(key, ((source.rules if source is not None else None, ctx._kept), routes))
    return routes


def _build_routes(
    host: str, port: int, source: RouteSource | None, ctx: RouteContext
) -> list[bytes]:
    if source is not None:
        return http_route_bytes(source.rules, source.namespace, ctx, port)
    return [default_route(host, port, ctx)]


def outbound_route_config(
    config: model.MeshConfig,
    ctx: RouteContext,
    extra_sources: Mapping[str, RouteSource] | None = None,
    allow_any: bool = True,
    host_visible: Callable[[str], bool] | None = None,
    bindings: Bindings | None = None,
) -> RouteParts:
    """The sidecar's one route configuration: a vhost per HTTP service port, the VS
    hosts outside the registry, and the catch-all for everything else."""
    services = ctx.services
    if bindings is None:
        bindings = Bindings(sidecar_virtual_services(config))
    owner, unbound = bindings.bind(services)
    sources = {host: _source(vs) for host, vs in owner.items()}
    for host, source in (extra_sources or {}).items():
        sources.setdefault(host, source)
    vhosts: list[_VHost] = []
    for host in sorted(services):
        service = services[host]
        source = sources.get(host)
        for port in service.ports:
            if not port.is_http:
                continue
            routes = _vhost_routes(host, port.port, source, ctx)
            domains = service_domains(service, port.port, ctx.proxy_ns)
            vhosts.append(_VHost(f"{host}:{port.port}", routes, domains))
    seen_unbound: set[str] = set()
    for host, vs in unbound:
        if host in seen_unbound or (host_visible is not None and not host_visible(host)):
            continue
        seen_unbound.add(host)
        domains = [(0, host)] if "*" in host else [(0, host), (0, f"{host}:*")]
        vhosts.append(_VHost(host, virtual_service_routes(vs, ctx, None), domains))
    contested: set[str] = set()
    return RouteParts(
        {
            name: (domains, _vhost_field(name, domains, routes, ctx.shared))
            for name, domains, routes in claim_domains(vhosts, contested)
        },
        _catch_all_bytes(allow_any),
        bool(seen_unbound),
        frozenset(contested),
    )


def service_sources(
    bindings: Bindings,
    services: Collection[str],
    extra_sources: Mapping[str, RouteSource] | None,
    hosts: Iterable[str],
) -> dict[str, RouteSource | None]:
    """The route source of each of `hosts`: its VirtualService, else a TrafficSplit's or
    ServiceProfile's, else none (the default route)."""
    out: dict[str, RouteSource | None] = {}
    for host in hosts:
        vs = bindings.owner(host, services)
        out[host] = _source(vs) if vs is not None else (extra_sources or {}).get(host)
    return out


def service_vhost_routes(
    host: str, service: Service, source: RouteSource | None, ctx: RouteContext
) -> dict[str, list[bytes]]:
    """vhost name -> routes, for each HTTP port of one service."""
    return {
        f"{host}:{port.port}": _vhost_routes(host, port.port, source, ctx)
        for port in service.ports
        if port.is_http
    }


_CATCH_ALL: dict[bool, bytes] = {}


def _catch_all_bytes(allow_any: bool) -> bytes:
    found = _CATCH_ALL.get(allow_any)
    if found is None:
        found = _CATCH_ALL[allow_any] = catch_all_vhost(allow_any).SerializeToString(
            deterministic=True
        )
    return found


def port_route_configs(
    parts: RouteParts, ctx: RouteContext, ports: Iterable[int]
) -> dict[int, bytes]:
    """Istio's outbound route configuration per port, named by the port: what a captured
    sidecar's `0.0.0.0_<port>` listener asks for. Each holds the view's virtual hosts
    for that port, every one claiming its domains among those of the same port only (a
    service's short name belongs to its vhost on each of its ports), the VS hosts
    outside the registry, and the catch-all. Derived from `parts`: a vhost whose domains
    are the same keeps its bytes, others take new domains before the same routes."""
    by_port: dict[int, list[_VHost]] = {p: [] for p in ports}
    unbound: list[_VHost] = []
    for name, built in parts.vhosts.items():
        host, _, port = name.rpartition(":")
        service = ctx.services.get(host) if port.isdigit() else None
        if service is None:
            unbound.append(_VHost(name, built, [(0, d) for d in built[0]]))
        elif int(port) in by_port:
            wanted = service_domains(service, int(port), ctx.proxy_ns, every_port=True)
            by_port[int(port)].append(_VHost(name, built, wanted))
    catch_all = field_bytes(2, parts.catch_all)
    configs = {}
    for port, vhosts in by_port.items():
        configs[port] = b"".join(
            (
                field_bytes(1, str(port).encode()),
                *(
                    _redomained(name, kept, domains)
                    for name, domains, kept in claim_domains([*vhosts, *unbound])
                ),
                catch_all,
                field_bytes(7, b""),
            )
        )
    return configs


def _redomained(name: str, kept: tuple[tuple[str, ...], bytes], domains: tuple[str, ...]) -> bytes:
    """A serialized vhost (RouteConfiguration field 2) with `domains` instead of the
    ones it was built with."""
    old, field = kept
    if domains == old:
        return field
    body = field_value(field)
    prefix = field_bytes(1, name.encode()) + _domain_fields(old)
    return field_bytes(
        2, field_bytes(1, name.encode()) + _domain_fields(domains) + body[len(prefix) :]
    )
