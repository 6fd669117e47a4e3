"""Everything one proxy receives, for one state of the world (config + registry)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from translators import gateways, linkerd, model, sidecar_scope
from translators.clusters import inbound_clusters, outbound_clusters
from translators.destination_rules import DestinationRuleIndex
from translators.endpoints import outbound_endpoints
from translators.http_filters import passthrough_cluster
from translators.listeners import sidecar_listeners
from translators.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Packed, Resources, pack_all
from translators.routes import RouteContext, RouteSource, outbound_route_config
from translators.services import Service, build_services


@dataclass(frozen=True)
class World:
    """The inputs of one round of translation; `generation` orders rounds."""

    config: model.MeshConfig
    proxies: tuple[model.Proxy, ...] = ()
    generation: int = 0

    @cached_property
    def services(self) -> dict[str, Service]:
        return build_services(self.config, self.proxies)

    @cached_property
    def destination_rules(self) -> DestinationRuleIndex:
        return DestinationRuleIndex(self.config)

    @cached_property
    def linkerd_routes(self) -> Mapping[str, RouteSource]:
        return linkerd.route_sources(self.config)

    @cached_property
    def retry_budgets(self) -> Mapping:
        return linkerd.retry_budgets(self.config)

    @cached_property
    def uses_source_labels(self) -> bool:
        return any(
            m.source_labels
            for vs in self.config.of_kind(model.VIRTUAL_SERVICE)
            for rule in vs.spec.http
            for m in rule.match
        )


@dataclass
class Translator:
    """Translates for many proxies of one World, computing shared outbound parts once."""

    world: World
    _shared: dict[tuple, Mapping[str, dict[str, Packed]]] = field(default_factory=dict)

    def _outbound(self, proxy: model.Proxy) -> Mapping[str, dict]:
        # Routes depend on the proxy's labels only through sourceLabels matches.
        world = self.world
        labels = proxy.labels
        label_key = tuple(sorted(labels.items())) if world.uses_source_labels else ()
        sidecar = sidecar_scope.select_sidecar(world.config, proxy)
        key = (proxy.namespace, label_key, sidecar.key if sidecar else None)
        shared = self._shared.get(key)
        if shared is None:
            config = world.config
            services = sidecar_scope.visible_services(world.services, sidecar)
            rules = world.destination_rules
            ctx = RouteContext(services, rules, proxy.namespace, labels)
            clusters = outbound_clusters(
                config, services, rules, proxy.namespace, world.retry_budgets
            )
            clusters.append(passthrough_cluster(config.mesh.connect_timeout))
            route_config = outbound_route_config(
                config,
                ctx,
                world.linkerd_routes,
                allow_any=sidecar_scope.allow_any(config, sidecar),
                host_visible=lambda host: sidecar_scope.host_visible(host, sidecar),
            )
            shared = {
                CLUSTER: pack_all(clusters),
                ENDPOINT: pack_all(outbound_endpoints(services, rules, proxy.namespace)),
                ROUTE: pack_all([route_config]),
            }
            self._shared[key] = shared
        return shared

    def translate(self, proxy: model.Proxy) -> Resources:
        if proxy.role == gateways.GATEWAY_ROLE:
            return gateways.translate_gateway(self.world, proxy)
        shared = self._outbound(proxy)
        clusters = dict(shared[CLUSTER])
        clusters.update(pack_all(inbound_clusters(self.world.config, proxy)))
        return {
            CLUSTER: clusters,
            ENDPOINT: shared[ENDPOINT],
            LISTENER: pack_all(sidecar_listeners(proxy)),
            ROUTE: shared[ROUTE],
        }


def translate(world: World, proxy: model.Proxy) -> Resources:
    return Translator(world).translate(proxy)


def translate_many(world: World, proxies: Sequence[model.Proxy]) -> dict[str, Resources]:
    translator = Translator(world)
    return {p.node_id: translator.translate(p) for p in proxies}
