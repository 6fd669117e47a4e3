"""Everything one proxy receives, for one state of the world (config + registry)."""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from translators import envoy_filter, gateways, linkerd, model, sidecar_scope
from translators.authorization import inbound_rbac
from translators.cache import CrossPushCache
from translators.clusters import cluster_variants, inbound_clusters, packed_service_clusters
from translators.destination_rules import DestinationRuleIndex, rule_index
from translators.endpoints import packed_service_endpoints
from translators.http_filters import passthrough_cluster
from translators.instrument import instrument
from translators.listeners import (
    AUTO_ADDRESSES,
    SIDECAR_PORTS,
    allocate_addresses,
    blackhole_cluster,
    captured_clusters,
    captured_listeners,
    dns_listener,
    dns_names,
    needs_address,
    service_addresses,
    sidecar_listeners,
)
from translators.memo import PerObject
from translators.naming import OUTBOUND_ROUTE_NAME, fqdn, host_matches
from translators.peer_authentication import proxy_modes
from translators.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    Packed,
    Resources,
    ResourceSet,
    pack_all,
    pack_serialized,
)
from translators.routes import (
    Bindings,
    RouteContext,
    RouteParts,
    RouteSource,
    is_sidecar_virtual_service,
    outbound_route_config,
    port_route_configs,
    service_domains,
    service_sources,
    service_vhost_routes,
    sidecar_virtual_services,
    vs_hosts,
)
from translators.services import (
    Registry,
    Service,
    build_registry,
    build_services,
    defined_hosts,
    registry_after_edit,
    update_registry,
)
from translators.tcp_routes import (
    PortUse,
    outbound_tcp_listeners,
    outbound_tcp_routes,
    port_uses,
    tcp_app_ports,
    update_port_uses,
)
from translators.telemetry import ProxyTelemetry, workload_of
from translators.telemetry import applicable as applicable_telemetry
from translators.telemetry import sides as telemetry_sides
from translators.tracing import collector_cluster, collector_cluster_name, registry_host

ROUTE_CONFIGURATION = "envoy.config.route.v3.RouteConfiguration"
TCP_ROUTES = "tcp_routes"  # shared per proxy view; wrapped into listeners per proxy
ROUTE_PARTS = "route_parts"  # the view's route configuration by virtual host
VIEW_CONTEXT = "context"  # what the view's routes were built with
VIEW_HOSTS = "hosts"  # the services a view sees
# World properties that depend on the config alone: kept when only workloads change.
_CONFIG_ONLY = (
    "auto_addresses",
    "bindings",
    "destination_rules",
    "linkerd_routes",
    "retry_budgets",
    "route_cache",
    "uses_source_labels",
)
_SERVICE_KINDS = frozenset({model.SERVICE, model.SERVICE_ENTRY})
# What an edit confined to some hosts may change (see Translator._after_host_edit).
_HOST_KINDS = _SERVICE_KINDS | {model.DESTINATION_RULE, model.VIRTUAL_SERVICE}
# World properties a VirtualService-only edit leaves as they were (bindings and the
# sourceLabels flag depend on VirtualServices; the registry on workloads, which are equal).
_KEPT_BY_VS_EDITS = (
    "auto_addresses",
    "destination_rules",
    "linkerd_routes",
    "retry_budgets",
    "route_cache",
    "services",
    "port_uses",
    "_endpoint_services",
)


@dataclass(frozen=True)
class World:
    """The inputs of one round of translation; `generation` orders rounds."""

    config: model.MeshConfig
    proxies: tuple[model.Proxy, ...] = ()
    generation: int = 0
    # Outputs of earlier pushes, for inputs that did not change (translators.cache).
    cache: CrossPushCache | None = field(default=None, compare=False)
    # Key sets the server fetched for RequestAuthentication, by source (JwksSource).
    jwks: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def services(self) -> dict[str, Service]:
        """The registry: the previous push's when its inputs are the same objects (an
        edit of anything but services and workloads leaves it as it was), updated where
        workloads came or went when only they changed."""
        if self.cache is None:
            return build_services(self.config, self.proxies)
        kept = self.cache.get(("services",))  # (config, registry)
        registry = None
        if kept is not None:
            registry = _registry_after(kept[1], kept[0], self.config)
        if registry is None:
            registry = build_registry(self.config, self.proxies)
        elif registry.proxies != self.proxies:
            registry = update_registry(registry, self.proxies, self.config)
        self.cache.put(("services",), (self.config, registry))
        return registry.services

    @cached_property
    def auto_addresses(self) -> Mapping[str, str]:
        """Addresses for the hosts that have none (listeners.allocate_addresses), from the
        mesh's autoAllocateRange; the previous push's mapping when it is the same, so
        that what was built from it is kept."""
        network = self.config.mesh.auto_allocate_range or AUTO_ADDRESSES
        hosts = [h for h, s in self.services.items() if needs_address(h, s)]
        found = allocate_addresses(hosts, network)
        if self.cache is not None:
            kept = self.cache.get(("auto_addresses",))
            if kept is not None and kept == found:
                return kept
            self.cache.put(("auto_addresses",), found)
        return found

    @cached_property
    def bindings(self) -> Bindings:
        """Which VirtualService owns each host, for sidecars."""
        return Bindings(sidecar_virtual_services(self.config))

    @cached_property
    def port_uses(self) -> PortUse:
        """Which service ports reach each address (translators.tcp_routes)."""
        return port_uses(self.services)

    @cached_property
    def destination_rules(self) -> DestinationRuleIndex:
        return rule_index(self.config)

    @cached_property
    def linkerd_routes(self) -> Mapping[str, RouteSource]:
        return linkerd.route_sources(self.config)

    @cached_property
    def retry_budgets(self) -> Mapping:
        return linkerd.retry_budgets(self.config)

    @cached_property
    def route_cache(self) -> CrossPushCache:
        """Virtual host routes shared between the namespace views of this world, and with
        later worlds when the server keeps a cache across pushes."""
        return self.cache if self.cache is not None else CrossPushCache()

    @cached_property
    def _service_cache(self) -> dict[tuple, tuple[tuple[dict, dict], tuple | None, Any]]:
        """(host, id(rule)) -> (clusters, assignments), the cross-push key, the rule."""
        return {}

    def service_resources(
        self, host: str, proxy_namespace: str, mtls: bool = False
    ) -> tuple[dict, dict]:
        """(clusters, assignments) of one service as a namespace sees it, packed. Views
        whose DestinationRule lookup gives the same rule share them within this world."""
        service = self.services[host]
        rule = self.destination_rules.lookup(host, proxy_namespace, service.namespace)
        key = (host, id(rule), mtls)
        entry = self._service_cache.get(key)
        found = entry[0] if entry is not None else None
        if found is None:
            timeout = self.config.mesh.connect_timeout
            budget = self.retry_budgets.get(host)
            lasting = None
            if self.cache is not None:
                lasting = (
                    "service",
                    _service_key(service),
                    id(rule),
                    timeout.SerializeToString(deterministic=True),
                    budget.SerializeToString(deterministic=True) if budget else b"",
                    mtls,
                )
                kept = self.cache.get(lasting)
                if kept is not None and kept[0] is rule:
                    found = kept[1]
            if found is None:
                variants = cluster_variants(service, rule)
                # Assignments are the same for views with and without mutual TLS.
                twin = self._service_cache.get((host, id(rule), not mtls))
                found = (
                    packed_service_clusters(service, rule, timeout, budget, variants, mtls),
                    twin[0][1]
                    if twin is not None
                    else packed_service_endpoints(service, rule, variants),
                )
            if lasting is not None:
                self.cache.put(lasting, (rule, found))
            self._service_cache[key] = (found, lasting, rule)
        return found

    def take(self, other: World, names: Sequence[str]) -> None:
        """Reuse `other`'s computed properties among `names` (those it has computed)."""
        for name in names:
            if name in other.__dict__:
                self.__dict__[name] = other.__dict__[name]

    def keep_service_resources(self, other: World, changed: Collection[str] = ()) -> None:
        """Take `other`'s per-service outputs but those of the `changed` hosts (an
        endpoint change keeps the cache's round going, so they stay there too)."""
        kept = self._service_cache
        kept.update(other._service_cache)
        if changed:
            for key in [key for key in kept if key[0] in changed]:
                del kept[key]

    @cached_property
    def _telemetry(self) -> dict[tuple, ProxyTelemetry]:
        return {}

    def telemetry(self, proxy: model.Proxy) -> ProxyTelemetry:
        """What `proxy` reports (translators.telemetry), shared by proxies alike."""
        key = (
            proxy.namespace,
            tuple(sorted(proxy.labels.items())),
            proxy.workload,
            proxy.service_account,
            proxy.mtls,
        )
        found = self._telemetry.get(key)
        if found is None:
            # What the sides get depends on the Telemetry resources that apply, shared by
            # the proxies they apply to; only who the proxy is differs.
            applicable = applicable_telemetry(self.config, proxy)
            sides_key = tuple(id(r) for r in applicable)
            sides = self._telemetry.get(sides_key)
            if sides is None:
                sides = self._telemetry[sides_key] = telemetry_sides(self.config, applicable)
            me = workload_of(proxy, self.config.mesh.trust_domain)
            found = self._telemetry[key] = ProxyTelemetry(me, *sides)
        return found

    def collectors(self, telemetry: ProxyTelemetry) -> tuple[dict, dict[str, Packed]]:
        """The cluster each of `telemetry`'s tracing collectors is reached through, and
        the clusters of its own that collectors outside the registry need (built and
        packed once per world for each set of collectors, not once per proxy)."""
        wanted = frozenset(telemetry.collectors())
        found = self._collectors.get(wanted)
        if found is None:
            names: dict = {}
            own: list = []
            for collector in sorted(wanted, key=repr):
                names[collector] = collector_cluster_name(collector, self.services)
                if registry_host(collector.host, self.services) is None:
                    own.append(collector_cluster(collector, self.config.mesh.connect_timeout))
            found = self._collectors[wanted] = (names, pack_all(own) if own else {})
        return found

    @cached_property
    def _collectors(self) -> dict[frozenset, tuple[dict, dict[str, Packed]]]:
        return {}

    @cached_property
    def _endpoint_services(self) -> dict[tuple[str, int], list[tuple[str, str, str]]]:
        """(address, port) of each endpoint -> the services it serves, by name."""
        found: dict[tuple[str, int], list[tuple[str, str, str]]] = {}
        for host in sorted(self.services):
            _index_service(found, host, self.services[host])
        return found

    def derive_endpoint_services(self, old: World, changed: Iterable[str]) -> None:
        """This world's endpoint index from `old`'s, where only `changed` hosts differ."""
        if "_endpoint_services" not in old.__dict__:
            return
        found = dict(old._endpoint_services)  # lists are copied before they change
        copied: set[tuple[str, int]] = set()
        for host in changed:
            for service, add in ((old.services.get(host), False), (self.services.get(host), True)):
                if service is not None:
                    _index_service(found, host, service, add, copied)
        self.__dict__["_endpoint_services"] = found

    def inbound_services(self, proxy: model.Proxy) -> dict[int, tuple[str, str, str]]:
        """The service that reaches each of `proxy`'s app ports (host, name, namespace),
        for the destination_service labels of its server-side metrics."""
        index = self._endpoint_services
        out = {}
        for port in proxy.ports:
            reached = port.app_port if proxy.captured else port.inbound_port
            found = index.get((proxy.ip, reached))
            if found:
                out[port.app_port] = found[0]
        return out

    @cached_property
    def uses_source_labels(self) -> bool:
        """Whether any route depends on the labels of the proxy it is built for."""
        return any(
            _uses_source_labels(vs.spec) for vs in self.config.of_kind(model.VIRTUAL_SERVICE)
        )


def _index_service(
    index: dict[tuple[str, int], list[tuple[str, str, str]]],
    host: str,
    service: Service,
    add: bool = True,
    copied: set | None = None,
) -> None:
    """Add (or remove) `service` under each of its endpoints, keeping hosts in order.
    `copied`: the keys whose lists this index owns (others are shared: copied first)."""
    entry = (host, service.short_name, service.namespace)
    for endpoints in service.endpoints.values():
        for e in endpoints:
            key = (e.address, e.port)
            hosts = index.get(key)
            if copied is not None and key not in copied:
                hosts = index[key] = list(hosts or ())
                copied.add(key)
            elif hosts is None:
                hosts = index[key] = []
            if add:
                if entry not in hosts:
                    bisect.insort(hosts, entry)
            elif entry in hosts:
                hosts.remove(entry)
                if not hosts:
                    del index[key]
                    if copied is not None:
                        copied.discard(key)


_REGISTRY_KINDS = (
    model.SERVICE,
    model.SERVICE_ENTRY,
    model.WORKLOAD_ENTRY,
    model.PEER_AUTHENTICATION,  # DISABLE ports: endpoints peers reach in plaintext
)
_REBUILDING_KINDS = (model.WORKLOAD_ENTRY, model.PEER_AUTHENTICATION)


def _registry_after(
    registry: Registry, before: model.MeshConfig, after: model.MeshConfig
) -> Registry | None:
    """The registry of `before`'s config for `after`'s, when no WorkloadEntry changed:
    the same when no Service or ServiceEntry did either, else only the hosts of those
    that did are built again. None when it must be built from nothing."""
    removed, added = (
        [r for r in side if r.kind in _REGISTRY_KINDS] for side in after.difference(before)
    )
    if not removed and not added:
        return registry
    if any(r.kind in _REBUILDING_KINDS for r in (*removed, *added)):
        return None
    return registry_after_edit(registry, removed, added)


def _source_labels_in(spec: Any) -> bool:
    """Whether a VirtualService matches on sourceLabels."""
    return any(m.source_labels for rule in (*spec.http, *spec.tcp) for m in rule.match)


_uses_source_labels = PerObject(_source_labels_in, limit=65536)  # per spec object


def _service_key(service: Service) -> tuple:
    """Everything of a Service its clusters and endpoints are built from, hashable."""
    endpoints = tuple(
        (
            port,
            tuple(
                (
                    e.address,
                    e.port,
                    e.weight,
                    tuple(sorted(e.labels.items())),
                    e.mtls,
                    e.workload,
                    e.workload_namespace,
                )
                for e in eps
            ),
        )
        for port, eps in sorted(service.endpoints.items())
    )
    return (
        service.hostname,
        service.namespace,
        service.short_name,
        service.ports,
        service.resolution,
        service.vips,
        endpoints,
    )


@dataclass
class Translator:
    """Translates for many proxies of one World, computing shared outbound parts once."""

    world: World
    _shared: dict[tuple, Mapping[str, Any]] = field(default_factory=dict)

    def _outbound(self, proxy: model.Proxy) -> Mapping[str, dict]:
        # Routes depend on the proxy's labels only through sourceLabels matches.
        world = self.world
        labels = proxy.labels
        label_key = tuple(sorted(labels.items())) if world.uses_source_labels else ()
        sidecar = sidecar_scope.select_sidecar(world.config, proxy)
        # A proxy holding its certificate gets clusters that speak mutual TLS (mtls.py).
        key = (proxy.namespace, label_key, sidecar.key if sidecar else None, proxy.mtls)
        shared = self._shared.get(key)
        if shared is None:
            config = world.config
            services = sidecar_scope.visible_services(world.services, sidecar)
            rules = world.destination_rules
            ctx = RouteContext(
                services,
                rules,
                proxy.namespace,
                labels,
                shared=world.route_cache,
                scope=sidecar.key if sidecar else None,
            )
            clusters: dict[str, Packed] = {}
            assignments: dict[str, Packed] = {}
            for host in sorted(services):
                service_clusters_, service_assignments = world.service_resources(
                    host, proxy.namespace, proxy.mtls
                )
                clusters.update(service_clusters_)
                assignments.update(service_assignments)
            clusters.update(pack_all([passthrough_cluster(config.mesh.connect_timeout)]))
            parts = outbound_route_config(
                config,
                ctx,
                world.linkerd_routes,
                allow_any=sidecar_scope.allow_any(config, sidecar),
                host_visible=lambda host: sidecar_scope.host_visible(host, sidecar),
                bindings=world.bindings,
            )
            owners, _ = world.bindings.bind(services)
            shared = {
                CLUSTER: ResourceSet(clusters),
                ENDPOINT: ResourceSet(assignments),
                ROUTE: _route_set(parts),
                TCP_ROUTES: outbound_tcp_routes(ctx, owners),
                VIEW_HOSTS: frozenset(services),
                ROUTE_PARTS: parts,
                VIEW_CONTEXT: ctx,
            }
            self._shared[key] = shared
        return shared

    @classmethod
    def after_endpoint_change(cls, previous: Translator, world: World) -> Translator:
        """A translator for `world`, whose config is `previous`'s and whose workloads
        differ: routes, listeners' inputs and clusters do not depend on endpoints, so
        every view keeps them, and only the assignments of services whose endpoints
        changed are built again (istiod's incremental EDS)."""
        old = previous.world
        if world.config is not old.config:
            raise ValueError("not an endpoint change: the config differs")
        world.take(old, _CONFIG_ONLY)
        changed = _differing(old.services, world.services, old.services.keys() | world.services)
        world.keep_service_resources(old, changed)
        world.derive_endpoint_services(old, changed)
        if "port_uses" in old.__dict__:
            world.__dict__["port_uses"] = update_port_uses(
                old.port_uses, old.services, world.services, changed
            )
        translator = cls(world)
        for key, view in previous._shared.items():
            affected = changed & view[VIEW_HOSTS]
            if not affected:
                translator._shared[key] = view
                continue
            namespace, mtls = key[0], key[3]
            new_assignments: dict[str, Packed] = {}
            renamed = False  # an assignment name came or went: no overlay
            changed_clusters: list[tuple[dict, dict]] = []
            for host in affected:
                old_clusters, old_assignments = old.service_resources(host, namespace, mtls)
                new_clusters, now = world.service_resources(host, namespace, mtls)
                new_assignments.update(now)
                renamed = renamed or old_assignments.keys() != now.keys()
                if any(
                    (p := new_clusters.get(n)) is None or p.hash != q.hash
                    for n, q in old_clusters.items()
                ) or len(old_clusters) != len(new_clusters):
                    changed_clusters.append((old_clusters, new_clusters))
            clusters = view[CLUSTER]
            if changed_clusters:
                merged = dict(clusters.items())
                for old_clusters, new_clusters in changed_clusters:
                    for name in old_clusters:
                        merged.pop(name, None)
                    merged.update(new_clusters)
                clusters = ResourceSet(merged)
            if renamed:
                assignments = dict(view[ENDPOINT].items())
                for host in affected:
                    for name in old.service_resources(host, namespace, mtls)[1]:
                        assignments.pop(name, None)
                assignments.update(new_assignments)
                endpoints = ResourceSet(assignments)
            else:
                # The same names with new content: a small set over the view's.
                endpoints = ResourceSet.overlay(view[ENDPOINT], new_assignments)
            translator._shared[key] = {**view, CLUSTER: clusters, ENDPOINT: endpoints}
        return translator

    @classmethod
    def after_config_change(cls, previous: Translator, world: World) -> Translator:
        """A translator for `world`, whose config differs from `previous`'s. When only
        sidecar VirtualServices changed (the everyday edit), every view keeps its
        clusters, endpoints and virtual hosts, and only the virtual hosts of the hosts
        whose owner changed are built again; anything else translates anew (reusing
        per-service and per-vhost outputs through the cross-push cache)."""
        old = previous.world
        changed = _changed_resources(old.config, world.config)
        if (
            changed is not None
            and world.proxies == old.proxies
            and not old.uses_source_labels
            and all(r.kind in _HOST_KINDS for r in changed)
            and any(r.kind != model.VIRTUAL_SERVICE for r in changed)
            and not any(
                _uses_source_labels(r.spec) for r in changed if r.kind == model.VIRTUAL_SERVICE
            )
        ):
            return cls._after_host_edit(previous, world, changed)
        if (
            changed is None
            or world.proxies != old.proxies
            or any(r.kind != model.VIRTUAL_SERVICE for r in changed)
            or old.uses_source_labels
            or any(_uses_source_labels(r.spec) for r in changed)
        ):
            return cls(world)
        world.__dict__["uses_source_labels"] = False  # neither before nor in what changed
        world.take(old, _KEPT_BY_VS_EDITS)
        world.keep_service_resources(old)
        _derive_bindings(old, world)
        sidecar_vs = [r for r in changed if is_sidecar_virtual_service(r)]
        translator = cls(world)
        if not sidecar_vs:
            translator._shared.update(previous._shared)
            return translator
        named = {h for r in sidecar_vs for h in vs_hosts(r)}
        for key, view in previous._shared.items():
            updated = _updated_view(view, named, old, world)
            if updated is not None:
                translator._shared[key] = updated
        return translator

    @classmethod
    def _after_host_edit(
        cls, previous: Translator, world: World, edited: Sequence[model.ConfigResource]
    ) -> Translator:
        """After an edit of Services, ServiceEntries, DestinationRules and VirtualServices
        that names hosts outright (adding a service with its rule and routes, say): each
        namespace view gets new virtual hosts, clusters and assignments for the services
        that changed, new clusters and assignments for the hosts whose rules changed, and
        new routes for the hosts whose VirtualService or rule changed and for those that
        send traffic to a changed host; everything else stays. Wildcards, views with a
        Sidecar, and views where a domain would move between virtual hosts translate
        anew."""
        old = previous.world
        kinds = {r.kind for r in edited}
        kept = ["linkerd_routes", "retry_budgets", "route_cache"]
        if model.VIRTUAL_SERVICE not in kinds:
            kept += ["bindings", "uses_source_labels"]
        else:
            world.__dict__["uses_source_labels"] = False  # neither before nor in what changed
            _derive_bindings(old, world)
        if model.DESTINATION_RULE not in kinds:
            kept.append("destination_rules")
        world.take(old, kept)
        before, after = old.services, world.services
        candidates = {h for r in edited if r.kind in _SERVICE_KINDS for h in defined_hosts(r)}
        changed = _differing(before, after, candidates)
        ruled = {fqdn(r.spec.host, r.namespace) for r in edited if r.kind == model.DESTINATION_RULE}
        named = {
            h
            for r in edited
            if r.kind == model.VIRTUAL_SERVICE and is_sidecar_virtual_service(r)
            for h in vs_hosts(r)
        }
        translator = cls(world)
        world.keep_service_resources(old, changed | ruled)
        world.derive_endpoint_services(old, changed)
        if "port_uses" in old.__dict__:
            world.__dict__["port_uses"] = update_port_uses(old.port_uses, before, after, changed)
        if not changed and not ruled and not named:
            translator._shared.update(previous._shared)
            return translator
        dependents = world.bindings.routing_to(changed | ruled, after)
        if (
            dependents is None
            or world.linkerd_routes
            or any("*" in h for h in changed | ruled | named)
            or any(h not in after for h in named)  # a VS host outside the registry
            or any(world.bindings.names(h) for h in changed if h not in after)
        ):
            return translator
        touched = changed | ruled | named
        tcp = any(
            not port.is_http
            for host in touched
            for service in (before.get(host), after.get(host))
            if service is not None
            for port in service.ports
        ) or not touched.isdisjoint(old.bindings.tcp_destinations | world.bindings.tcp_destinations)
        edit = _HostEdit(old, world, changed, ruled | named | dependents, changed | ruled, tcp)
        for key, view in previous._shared.items():
            if key[2] is None:  # a Sidecar's view may see other services: anew
                updated = edit.view(key[0], view, key[3])
                if updated is not None:
                    translator._shared[key] = updated
        return translator

    def translate(self, proxy: model.Proxy) -> Resources:
        resources = self._translate(proxy)
        patches = envoy_filter.proxy_patches(self.world.config, proxy)
        if patches:  # EnvoyFilter: the last step, on what was made for this proxy
            resources = envoy_filter.apply(resources, patches, proxy.role == gateways.GATEWAY_ROLE)
        return resources

    def _translate(self, proxy: model.Proxy) -> Resources:
        if proxy.role == gateways.GATEWAY_ROLE:
            return gateways.translate_gateway(self.world, proxy)
        shared = self._outbound(proxy)
        inbound, listeners = self._own(proxy, shared[TCP_ROUTES], shared[VIEW_CONTEXT])
        routes = shared[ROUTE]
        if proxy.captured:
            routes = _port_routes(shared[ROUTE_PARTS], shared[VIEW_CONTEXT])
        return {
            CLUSTER: ResourceSet(inbound, base=shared[CLUSTER]) if inbound else shared[CLUSTER],
            ENDPOINT: shared[ENDPOINT],
            LISTENER: listeners,
            ROUTE: routes,
        }

    def _own(
        self, proxy: model.Proxy, tcp_routes: list, ctx: RouteContext
    ) -> tuple[dict[str, Packed], ResourceSet]:
        """The proxy's own clusters and its listeners: they depend on the proxy, the mesh
        connect timeout, which of its ports only TCP reaches, and the view's TCP routes
        (captured: also the view's HTTP ports and outbound policy); kept across pushes
        while those are the same (most edits change none of them)."""
        world = self.world
        timeout = world.config.mesh.connect_timeout.SerializeToString(deterministic=True)
        tcp_ports = frozenset(tcp_app_ports(proxy, world.port_uses))
        captured = None
        if proxy.captured:
            sidecar = sidecar_scope.select_sidecar(world.config, proxy)
            allow_any = sidecar_scope.allow_any(world.config, sidecar)
            captured = (*_capture_view(ctx, world.auto_addresses), allow_any)
        modes = proxy_modes(world.config, proxy)  # PeerAuthentication, by app port
        rbac = inbound_rbac(world.config, proxy, world.jwks)  # RequestAuthn, AuthzPolicy
        telemetry = world.telemetry(proxy)
        collectors, collector_clusters = world.collectors(telemetry)
        served = world.inbound_services(proxy)
        key = ("proxy", proxy.node_id)
        kept = world.cache.get(key) if world.cache is not None else None
        if (
            kept is not None
            and kept[0] == proxy
            and kept[1] == timeout
            and kept[2] == tcp_ports
            and kept[3] is tcp_routes
            and kept[6] == captured
            and kept[7] == modes
            and kept[8] == rbac
            and kept[9] == (telemetry, collectors, served)
        ):
            return kept[4], kept[5]
        inbound = pack_all(inbound_clusters(world.config, proxy, served))
        inbound.update(collector_clusters)
        if captured is not None:
            http_ports, dns, allow_any = captured
            tcp = [
                (address, route.port, route.proxy)
                for route in tcp_routes
                for address in service_addresses(
                    route.host, ctx.services[route.host], world.auto_addresses
                )
            ]
            built = captured_listeners(proxy, http_ports, tcp, tcp_ports, allow_any, modes, rbac)
            instrument(built, telemetry, collectors)
            listeners = pack_all(built)
            listeners[dns.name] = dns  # built once for the view
            # Overrides the view's PassthroughCluster (a forward proxy by Host, for
            # uncaptured sidecars) with the original destination.
            inbound.update(pack_all(captured_clusters(world.config.mesh.connect_timeout)))
        else:
            built = [
                *sidecar_listeners(proxy, tcp_ports, modes, rbac),
                *outbound_tcp_listeners(proxy, tcp_routes),
            ]
            instrument(built, telemetry, collectors)
            listeners = pack_all(built)
            if "STRICT" in modes.values():  # where STRICT sends plaintext (mtls.py)
                inbound.update(pack_all([blackhole_cluster(world.config.mesh.connect_timeout)]))
        found = (
            proxy,
            timeout,
            tcp_ports,
            tcp_routes,
            inbound,
            ResourceSet(listeners),
            captured,
            modes,
            rbac,
            (telemetry, collectors, served),
        )
        if world.cache is not None:
            world.cache.put(key, found)
        return found[4], found[5]


def _capture_view(ctx: RouteContext, allocated: Mapping[str, str]) -> tuple[frozenset[int], Packed]:
    """What captured sidecars take from their view: its HTTP service ports, and its DNS
    listener (the same for all of them), packed. Kept on the view's context (a new one
    is made whenever the view's services change) while the allocated addresses are the
    same mapping, so that the proxies of a view do not each walk every service or build
    the table again."""
    found = ctx.__dict__.get("_capture_view")
    if found is None or found[0] is not allocated:
        table = dns_names(ctx.services, ctx.proxy_ns, allocated)
        (dns,) = pack_all([dns_listener(table)]).values()
        found = ctx.__dict__["_capture_view"] = (allocated, _http_ports(ctx), dns)
    return found[1], found[2]


def _http_ports(ctx: RouteContext) -> frozenset[int]:
    """The view's HTTP service ports: a captured sidecar's `0.0.0.0_<port>` listeners."""
    ports = frozenset(p.port for s in ctx.services.values() for p in s.ports if p.is_http)
    return ports - SIDECAR_PORTS


def _port_routes(parts: RouteParts, ctx: RouteContext) -> ResourceSet:
    """A captured sidecar's routes: a configuration per HTTP port of its view (Istio's,
    named by the port), in place of `http_proxy`. Kept on the view's route parts, which
    are new whenever a route or domain of the view changes."""
    found = parts.__dict__.get("_port_routes")
    if found is not None and found[0] is ctx:
        return found[1]
    configs = port_route_configs(parts, ctx, sorted(_http_ports(ctx)))
    routes = ResourceSet(
        {
            str(port): pack_serialized(str(port), ROUTE_CONFIGURATION, body)
            for port, body in configs.items()
        }
    )
    parts.__dict__["_port_routes"] = (ctx, routes)
    return routes


def _route_set(parts: RouteParts) -> ResourceSet:
    return ResourceSet(
        {
            OUTBOUND_ROUTE_NAME: pack_serialized(
                OUTBOUND_ROUTE_NAME, ROUTE_CONFIGURATION, parts.serialized()
            )
        }
    )


def _changed_resources(
    old: model.MeshConfig, new: model.MeshConfig
) -> list[model.ConfigResource] | None:
    """The resources one config has and the other lacks, by identity (the store keeps
    the objects of unchanged files); None when the mesh settings differ."""
    if old.mesh is not new.mesh and old.mesh != new.mesh:
        return None
    removed, added = new.difference(old)
    return [*removed, *added]


def _updated_view(
    view: Mapping[str, Any], named: set[str], old: World, world: World
) -> Mapping[str, Any] | None:
    """`view` after VirtualServices naming `named` hosts (or patterns) changed; None when
    it cannot be updated in place (a VS host outside the registry is involved)."""
    parts: RouteParts = view[ROUTE_PARTS]
    ctx: RouteContext = view[VIEW_CONTEXT]
    services = view[VIEW_HOSTS]
    if parts.has_unbound or any(
        h not in services and not ("*" in h and any(host_matches(h, s) for s in services))
        for h in named
    ):
        return None  # a vhost for a host outside the registry: claim domains anew
    candidates = {h for h in named if h in services}
    for pattern in (h for h in named if "*" in h):
        candidates.update(s for s in services if host_matches(pattern, s))
    affected = [
        h
        for h in sorted(candidates)
        if old.bindings.owner(h, services) is not world.bindings.owner(h, services)
    ]
    if not affected:
        return view
    sources = service_sources(world.bindings, services, world.linkerd_routes, affected)
    routes: dict[str, list] = {}
    for host in affected:
        routes.update(service_vhost_routes(host, ctx.services[host], sources[host], ctx))
    parts = parts.with_routes(routes, world.route_cache)
    updated = {**view, ROUTE_PARTS: parts, ROUTE: _route_set(parts)}
    if any(not p.is_http for h in affected for p in ctx.services[h].ports):
        owners, _ = world.bindings.bind(services)
        updated[TCP_ROUTES] = outbound_tcp_routes(ctx, owners)
    return updated


@dataclass
class _HostEdit:
    """One namespace view after an edit confined to some hosts (see
    Translator._after_host_edit)."""

    old: World
    world: World
    changed: set[str]  # service hosts that came, went or changed: virtual hosts anew
    routed: set[str]  # service hosts whose routes are built again (their domains stay)
    built: set[str]  # service hosts whose clusters and assignments are built again
    tcp: bool  # whether the view's TCP routes are built again

    @cached_property
    def hosts(self) -> frozenset[str]:
        return frozenset(self.world.services)

    def view(
        self, namespace: str, view: Mapping[str, Any], mtls: bool = False
    ) -> Mapping[str, Any] | None:
        parts: RouteParts = view[ROUTE_PARTS]
        if parts.has_unbound:
            return None  # a VS host outside the registry may now name a service
        world, before, after = self.world, self.old.services, self.world.services
        old_ctx: RouteContext = view[VIEW_CONTEXT]
        ctx = RouteContext(
            after,
            world.destination_rules,
            namespace,
            old_ctx.proxy_labels,
            shared=world.route_cache,
            scope=None,
        )
        rebuilt = sorted(h for h in self.changed | self.routed if h in after)
        sources = service_sources(world.bindings, after, world.linkerd_routes, rebuilt)
        gone = [
            f"{host}:{port.port}"
            for host in self.changed
            if (service := before.get(host)) is not None
            for port in service.ports
            if port.is_http
        ]
        added = [
            (name, service_domains(after[host], int(name.rpartition(":")[2]), namespace), routes)
            for host in rebuilt
            if host in self.changed
            for name, routes in service_vhost_routes(host, after[host], sources[host], ctx).items()
        ]
        parts = parts.with_services(gone, added, world.route_cache)
        if parts is None:
            return None
        routes: dict[str, list] = {}
        for host in rebuilt:
            if host not in self.changed:
                routes.update(service_vhost_routes(host, after[host], sources[host], ctx))
        parts = parts.with_routes(routes, world.route_cache)
        gone_clusters: list[str] = []
        gone_assignments: list[str] = []
        for host in self.built:
            if host in before:
                old_clusters, old_assignments = self.old.service_resources(host, namespace, mtls)
                gone_clusters += old_clusters
                gone_assignments += old_assignments
        new_clusters: dict[str, Packed] = {}
        new_assignments: dict[str, Packed] = {}
        for host in sorted(self.built):
            if host in after:
                clusters, assignments = world.service_resources(host, namespace, mtls)
                new_clusters.update(clusters)
                new_assignments.update(assignments)
        updated = {
            **view,
            CLUSTER: _replaced(view[CLUSTER], gone_clusters, new_clusters),
            ENDPOINT: _replaced(view[ENDPOINT], gone_assignments, new_assignments),
            ROUTE: _route_set(parts),
            ROUTE_PARTS: parts,
            VIEW_CONTEXT: ctx,
            VIEW_HOSTS: self.hosts,
        }
        if self.tcp:
            owners, _ = world.bindings.bind(after)
            updated[TCP_ROUTES] = outbound_tcp_routes(ctx, owners)
        return updated


def _differing(
    before: Mapping[str, Service], after: Mapping[str, Service], hosts: Iterable[str]
) -> set[str]:
    """The `hosts` whose service came, went or changed between two registries."""
    return {h for h in hosts if (was := before.get(h)) is not (now := after.get(h)) and was != now}


def _derive_bindings(old: World, world: World) -> None:
    """`world`'s bindings from `old`'s and the VirtualServices that came and went."""
    if "bindings" not in old.__dict__:
        return
    removed, added = (
        [r for r in side if r.kind == model.VIRTUAL_SERVICE and is_sidecar_virtual_service(r)]
        for side in world.config.difference(old.config)
    )
    world.__dict__["bindings"] = Bindings.after(
        old.bindings, sidecar_virtual_services(world.config), removed, added
    )


def _replaced(base: ResourceSet, gone: Sequence[str], new: Mapping[str, Packed]) -> ResourceSet:
    """`base` without `gone` and with `new`: an overlay when nothing goes away."""
    if all(name in new for name in gone):
        return ResourceSet.overlay(base, new)
    merged = dict(base.items())
    for name in gone:
        merged.pop(name, None)
    merged.update(new)
    return ResourceSet(merged)


def translate(world: World, proxy: model.Proxy) -> Resources:
    return Translator(world).translate(proxy)


def translate_many(world: World, proxies: Sequence[model.Proxy]) -> dict[str, Resources]:
    translator = Translator(world)
    return {p.node_id: translator.translate(p) for p in proxies}
