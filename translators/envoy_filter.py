"""EnvoyFilter: patches on what translation made for one proxy, applied last, as Istio
applies them (reference/istio-mapping.md §9).

Which filters apply: those of the root namespace and of the proxy's namespace whose
workloadSelector matches (none selects every workload), in Istio's order: priority,
root namespace first, oldest, then by name. Patches are applied per object, from the
top: a listener, then its filter chains, their network filters, the HTTP filters and
inline routes of each connection manager; route configurations, their virtual hosts and
routes; clusters. At each level the structural operations (ADD, REMOVE, INSERT_*,
REPLACE) run in order before the MERGEs, and a MERGE is a protobuf merge (repeated
fields appended; a filter's typed_config merged when the types are the same).

Contexts: SIDECAR_INBOUND is a sidecar's inbound listeners, their inline routes and its
inbound clusters; SIDECAR_OUTBOUND the rest of a sidecar's; GATEWAY a gateway's; ANY all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, MutableSequence
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2
from google.protobuf.message import Message

from protos import envoy_filter_pb2 as ef_pb2
from translators import model
from translators.envoy_filter_values import ApplyTo, PatchValueError, parse_value
from translators.memo import PerObject
from translators.naming import has_labels
from translators.proto_rules import problems
from translators.resources import (
    CLUSTER,
    LISTENER,
    ROUTE,
    Packed,
    Resources,
    ResourceSet,
    pack,
)

_log = logging.getLogger(__name__)
Op = ef_pb2.Patch.Operation
Context = ef_pb2.PatchContext
HCM_FILTER = "envoy.filters.network.http_connection_manager"
_LISTENER_LEVEL = {
    ApplyTo.LISTENER,
    ApplyTo.LISTENER_FILTER,
    ApplyTo.FILTER_CHAIN,
    ApplyTo.NETWORK_FILTER,
    ApplyTo.HTTP_FILTER,
}
_ROUTE_LEVEL = {ApplyTo.ROUTE_CONFIGURATION, ApplyTo.VIRTUAL_HOST, ApplyTo.HTTP_ROUTE}


@dataclass(frozen=True)
class Patch:
    """One configPatch, its value parsed (None for REMOVE)."""

    apply_to: int
    context: int
    match: ef_pb2.EnvoyConfigObjectMatch
    operation: int
    value: Message | None
    where: str  # "<namespace>/<name> configPatches[i]", for logs


def _compile(res: model.ConfigResource) -> tuple[Patch, ...]:
    out = []
    for i, patch in enumerate(res.spec.config_patches):
        value = None
        if patch.patch.operation != Op.REMOVE and patch.apply_to in _SUPPORTED:
            try:
                value = parse_value(patch.apply_to, patch.patch.value)
            except PatchValueError:
                continue  # reported with its line when the file loaded; never sent
        out.append(
            Patch(
                patch.apply_to,
                patch.match.context,
                patch.match,
                patch.patch.operation,
                value,
                f"{res.namespace}/{res.name} configPatches[{i}]",
            )
        )
    return tuple(out)


_compiled = PerObject(_compile)
_SUPPORTED = _LISTENER_LEVEL | _ROUTE_LEVEL | {ApplyTo.CLUSTER}


def applicable(config: model.MeshConfig, proxy: model.Proxy) -> list[model.ConfigResource]:
    """The proxy's EnvoyFilters in Istio's order."""
    root = config.mesh.root_namespace
    found = []
    for res in config.of_kind(model.ENVOY_FILTER):
        if res.namespace not in (root, proxy.namespace):
            continue
        selector = res.spec.workload_selector.labels
        if selector and not has_labels(proxy.labels, selector):
            continue
        found.append(res)
    return sorted(
        found,
        key=lambda r: (r.spec.priority, r.namespace != root, r.created or "", r.name, r.namespace),
    )


def proxy_patches(config: model.MeshConfig, proxy: model.Proxy) -> tuple[Patch, ...]:
    return tuple(p for res in applicable(config, proxy) for p in _compiled(res))


def apply(resources: Resources, patches: tuple[Patch, ...], gateway: bool) -> Resources:
    """`resources` with `patches` applied (a new mapping; unpatched sets are shared)."""
    if not patches:
        return resources
    out = dict(resources)
    listeners = any(p.apply_to in _LISTENER_LEVEL | _ROUTE_LEVEL for p in patches)
    if listeners and LISTENER in resources:
        out[LISTENER] = _patch_set(
            resources[LISTENER],
            listener_pb2.Listener,
            lambda m: _listener(m, patches, gateway),
            _added(patches, ApplyTo.LISTENER, gateway),
        )
    if ROUTE in resources and any(p.apply_to in _ROUTE_LEVEL for p in patches):
        context = Context.GATEWAY if gateway else Context.SIDECAR_OUTBOUND
        out[ROUTE] = _patch_set(
            resources[ROUTE],
            route_pb2.RouteConfiguration,
            lambda m: _route_config(m, patches, context),
            [],
        )
    if CLUSTER in resources and any(p.apply_to == ApplyTo.CLUSTER for p in patches):
        out[CLUSTER] = _patch_set(
            resources[CLUSTER],
            cluster_pb2.Cluster,
            lambda m: _cluster(m, patches, gateway),
            _added(patches, ApplyTo.CLUSTER, gateway),
        )
    return out


def _patch_set(
    resources: ResourceSet,
    message_type: type[Message],
    patch: Callable[[Message], bool],
    added: Iterable[Message],
) -> ResourceSet:
    """Each resource patched (kept as it was when nothing applied; dropped when `patch`
    says False), then the ADDs."""
    items: dict[str, Packed] = {}
    changed = False
    for name, packed in resources.items():
        if packed.value is None:
            items[name] = packed
            continue
        message = message_type.FromString(packed.value)
        if not patch(message):
            changed = True
            continue
        if message.SerializeToString(deterministic=True) == packed.value:
            items[name] = packed
            continue
        broken = problems(message)
        if broken:  # what Envoy would refuse is not sent: the resource stays as it was
            _log.warning("EnvoyFilter patches on %s not applied: %s", name, "; ".join(broken))
            items[name] = packed
            continue
        changed = True
        items[name] = pack(message.name, message)
    for message in added:
        changed = True
        items[message.name] = pack(message.name, message)
    return ResourceSet(items) if changed else resources


def _added(patches: Iterable[Patch], apply_to: int, gateway: bool) -> list[Message]:
    """LISTENER and CLUSTER ADDs (INSERT_* too, as Istio turns them into ADD); with context
    ANY they go to a sidecar's outbound side and gateways, as in Istio."""
    out = []
    for p in patches:
        if p.apply_to != apply_to or p.operation not in _ADDING or p.value is None:
            continue
        if p.context != Context.ANY and (p.context == Context.GATEWAY) != gateway:
            continue  # GATEWAY adds to gateways; SIDECAR_* to sidecars; ANY to both
        message = type(p.value)()
        message.CopyFrom(p.value)
        out.append(message)
    return out


_ADDING = {Op.ADD, Op.INSERT_BEFORE, Op.INSERT_AFTER, Op.INSERT_FIRST}


def _context_matches(patch: Patch, context: int) -> bool:
    return patch.context == Context.ANY or patch.context == context


# ---- listeners ---------------------------------------------------------------------


def _listener_context(listener: listener_pb2.Listener, gateway: bool) -> int:
    if gateway:
        return Context.GATEWAY
    if listener.traffic_direction == base_pb2.INBOUND:
        return Context.SIDECAR_INBOUND
    return Context.SIDECAR_OUTBOUND


def _listener_matches(patch: Patch, listener: listener_pb2.Listener) -> bool:
    """Istio's listener match. On virtualInbound/virtualOutbound, portNumber picks filter
    chains (by their destination port) for patches below the listener, and is compared
    with the listener's own port for LISTENER patches."""
    match = patch.match.listener
    if match.name and match.name != listener.name:
        return False
    if match.port_number and (patch.apply_to == ApplyTo.LISTENER or not _virtual(listener)):
        return listener.address.socket_address.port_value == match.port_number
    return True


def _virtual(listener: listener_pb2.Listener) -> bool:
    """virtualInbound / virtualOutbound: portNumber is compared with each chain's port."""
    return listener.use_original_dst.value or any(
        f.name == "envoy.filters.listener.original_dst" for f in listener.listener_filters
    )


def _chain_matches(patch: Patch, listener, chain) -> bool:
    match = patch.match.listener
    port = chain.filter_chain_match.destination_port.value
    if match.port_number and _virtual(listener) and port != match.port_number:
        return False
    if not patch.match.HasField("listener") or not match.HasField("filter_chain"):
        return True
    fc = match.filter_chain
    cm = chain.filter_chain_match
    if fc.name and fc.name != chain.name:
        return False
    if fc.sni and fc.sni not in cm.server_names:
        return False
    if fc.transport_protocol and fc.transport_protocol != (cm.transport_protocol or "raw_buffer"):
        return False
    if fc.application_protocols:
        wanted = {p.strip() for p in fc.application_protocols.split(",")}
        if not wanted <= set(cm.application_protocols):
            return False
    if fc.destination_port and fc.destination_port != cm.destination_port.value:
        return False
    if fc.HasField("filter"):
        names = [f.name for f in chain.filters]
        if fc.filter.name and fc.filter.name not in names:
            return False
        if fc.filter.HasField("sub_filter") and fc.filter.sub_filter.name:
            hcm = _hcm_of(chain)
            if hcm is None or fc.filter.sub_filter.name not in [f.name for f in hcm.http_filters]:
                return False
    return True


def _listener(listener: listener_pb2.Listener, patches: tuple[Patch, ...], gateway: bool) -> bool:
    context = _listener_context(listener, gateway)
    mine = [p for p in patches if _context_matches(p, context) and _listener_matches(p, listener)]
    if not mine:
        return True
    for p in mine:
        if p.apply_to == ApplyTo.LISTENER and p.operation == Op.REMOVE:
            return False
    for p in mine:
        if p.apply_to == ApplyTo.LISTENER and p.operation == Op.MERGE and p.value is not None:
            listener.MergeFrom(p.value)
    _listener_filters(listener, [p for p in mine if p.apply_to == ApplyTo.LISTENER_FILTER])
    _keep(listener.filter_chains, lambda chain: _chain(listener, chain, mine, context))
    default = listener.default_filter_chain if listener.HasField("default_filter_chain") else None
    if default is not None and not _chain(listener, default, mine, context):
        listener.ClearField("default_filter_chain")
    for p in mine:
        if p.apply_to == ApplyTo.FILTER_CHAIN and p.operation in _ADDING and p.value is not None:
            listener.filter_chains.append(p.value)
    return True


def _chain(listener, chain, patches: list[Patch], context: int) -> bool:
    """One filter chain's patches; False when a patch removes it."""
    mine = [p for p in patches if _chain_matches(p, listener, chain)]
    if any(p.apply_to == ApplyTo.FILTER_CHAIN and p.operation == Op.REMOVE for p in mine):
        return False
    for p in mine:
        if p.apply_to == ApplyTo.FILTER_CHAIN and p.operation == Op.MERGE and p.value:
            merge_with_sockets(chain, p.value)
    _filters(
        chain.filters,
        [p for p in mine if p.apply_to == ApplyTo.NETWORK_FILTER],
        lambda p: p.match.listener.filter_chain.filter.name,
    )
    _http_level(chain, mine, context)
    return True


def merge_with_sockets(target: Message, value: Message) -> None:
    """A protobuf merge, but a transport socket of the same name has its TLS context
    merged into the one there (as Istio does), not replaced: a MERGE that sets one TLS
    parameter keeps the certificates, ALPN and peer validation."""
    patch = type(value)()
    patch.CopyFrom(value)
    if (
        patch.HasField("transport_socket")
        and target.HasField("transport_socket")
        and patch.transport_socket.name == target.transport_socket.name
    ):
        _merge_filter(target.transport_socket, patch.transport_socket)
        patch.ClearField("transport_socket")
    target.MergeFrom(patch)


def _listener_filters(listener, patches: list[Patch]) -> None:
    _filters(listener.listener_filters, patches, lambda p: p.match.listener.listener_filter)


def _hcm_of(chain) -> hcm_pb2.HttpConnectionManager | None:
    for f in chain.filters:
        if f.name == HCM_FILTER and f.HasField("typed_config"):
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            return hcm
    return None


def _http_level(chain, patches: list[Patch], context: int) -> None:
    """HTTP_FILTER patches and inline route patches on the chain's connection manager."""
    http = [p for p in patches if p.apply_to == ApplyTo.HTTP_FILTER]
    routes = [p for p in patches if p.apply_to in _ROUTE_LEVEL]
    if not http and not routes:
        return
    for f in chain.filters:
        if f.name != HCM_FILTER or not f.HasField("typed_config"):
            continue
        hcm = hcm_pb2.HttpConnectionManager()
        f.typed_config.Unpack(hcm)
        _filters(
            hcm.http_filters,
            http,
            lambda p: p.match.listener.filter_chain.filter.sub_filter.name,
        )
        if routes and hcm.HasField("route_config"):
            _route_config(hcm.route_config, tuple(routes), context)
        f.typed_config.Pack(hcm)


def _filters(
    filters: MutableSequence, patches: list[Patch], target: Callable[[Patch], str]
) -> None:
    """Network, HTTP or listener filter patches on one list, in Istio's two passes."""
    for p in patches:
        if p.operation == Op.MERGE:
            continue
        name = target(p)
        names = [f.name for f in filters]
        if p.operation == Op.REMOVE:
            if name:
                _keep(filters, lambda f, name=name: f.name != name)
            continue
        if p.value is None:
            continue
        if p.operation == Op.REPLACE:
            if name in names:
                filters[names.index(name)].CopyFrom(p.value)
        else:
            _insert(filters, names, p.operation, name, p.value)
    for p in patches:
        name = target(p)
        if p.operation != Op.MERGE or p.value is None or not name:
            continue
        for f in filters:
            if f.name == name:
                _merge_filter(f, p.value)
                break


def _insert(items: MutableSequence, names: list[str], operation: int, target: str, value) -> None:
    """ADD (at the end), INSERT_FIRST, or INSERT_BEFORE/AFTER the item named `target`
    (at the front, or the end, when no item has that name), as Istio places them."""
    if operation == Op.ADD:
        items.append(value)
    elif operation == Op.INSERT_FIRST:
        items.insert(0, value)
    elif operation == Op.INSERT_BEFORE:
        items.insert(names.index(target) if target in names else 0, value)
    elif operation == Op.INSERT_AFTER:
        items.insert(names.index(target) + 1 if target in names else len(items), value)


def _keep(items: MutableSequence, keep: Callable[[Any], bool]) -> None:
    """Drop, in place, the items of a repeated field that `keep` refuses."""
    kept = [item for item in items if keep(item)]
    del items[:]
    items.extend(kept)


def _merge_filter(existing, value) -> None:
    """A filter MERGE: the name and other fields merged; typed_configs of one type merged."""
    patch = type(value)()
    patch.CopyFrom(value)
    if patch.HasField("typed_config") and existing.HasField("typed_config"):
        if patch.typed_config.type_url == existing.typed_config.type_url:
            merged = _unpacked(existing.typed_config)
            merged.MergeFrom(_unpacked(patch.typed_config))
            existing.typed_config.Pack(merged)
        patch.ClearField("typed_config")
    existing.MergeFrom(patch)


def _unpacked(value: any_pb2.Any) -> Message:
    from google.protobuf import symbol_database

    name = value.type_url.rpartition("/")[2]
    message = symbol_database.Default().GetSymbol(name)()
    value.Unpack(message)
    return message


# ---- routes ------------------------------------------------------------------------


def _route_config(
    config: route_pb2.RouteConfiguration, patches: tuple[Patch, ...], context: int
) -> bool:
    mine = [p for p in patches if _context_matches(p, context) and _route_config_matches(p, config)]
    for p in mine:
        if p.apply_to == ApplyTo.ROUTE_CONFIGURATION and p.operation == Op.MERGE and p.value:
            config.MergeFrom(p.value)
    _keep(config.virtual_hosts, lambda vhost: _vhost(vhost, mine))
    for p in mine:
        if p.apply_to == ApplyTo.VIRTUAL_HOST and p.operation == Op.ADD and p.value is not None:
            config.virtual_hosts.append(p.value)
    return True


def _vhost(vhost: route_components_pb2.VirtualHost, patches: list[Patch]) -> bool:
    """One virtual host's patches and its routes'; False when a patch removes it."""
    mine = [p for p in patches if _vhost_matches(p, vhost)]
    named = [
        p
        for p in mine
        if p.apply_to == ApplyTo.VIRTUAL_HOST and p.match.route_configuration.vhost.name
    ]
    if any(p.operation == Op.REMOVE for p in named):
        return False
    for p in named:
        if p.operation == Op.REPLACE and p.value is not None:
            vhost.CopyFrom(p.value)
    for p in mine:
        if p.apply_to == ApplyTo.VIRTUAL_HOST and p.operation == Op.MERGE and p.value is not None:
            vhost.MergeFrom(p.value)
    _routes(vhost, [p for p in mine if p.apply_to == ApplyTo.HTTP_ROUTE])
    return True


def _route_config_matches(patch: Patch, config: route_pb2.RouteConfiguration) -> bool:
    if not patch.match.HasField("route_configuration"):
        return True
    match = patch.match.route_configuration
    if match.name and match.name != config.name:
        return False
    if match.port_number and _route_port(config.name) != match.port_number:
        return False
    if match.gateway:  # "namespace/name": a gateway's HTTPS route names hold both
        namespace, _, name = match.gateway.rpartition("/")
        return config.name.startswith("https.") and config.name.endswith(f".{name}.{namespace}")
    return True


def _route_port(name: str) -> int | None:
    """The port a route configuration serves, from its name: a captured sidecar's
    `<port>`, a gateway's `http.<port>` / `https.<port>.<server>.<gw>.<ns>`, an inline
    inbound route's `inbound|<port>||`."""
    if name.isdigit():
        return int(name)
    for sep in (".", "|"):
        parts = name.split(sep)
        if len(parts) > 1 and parts[1].isdigit():
            return int(parts[1])
    return None


def _vhost_matches(patch: Patch, vhost: route_components_pb2.VirtualHost) -> bool:
    if not patch.match.HasField("route_configuration"):
        return True
    match = patch.match.route_configuration.vhost
    if match.name and match.name != vhost.name:
        return False
    return not (match.domain_name and match.domain_name not in vhost.domains)


_ACTIONS = {
    ef_pb2.RouteMatch.ROUTE: "route",
    ef_pb2.RouteMatch.REDIRECT: "redirect",
    ef_pb2.RouteMatch.DIRECT_RESPONSE: "direct_response",
}


def _route_matches(patch: Patch, route: route_components_pb2.Route) -> bool:
    match = patch.match.route_configuration.vhost.route
    if match.name and match.name != route.name:
        return False
    action = _ACTIONS.get(match.action)
    return action is None or route.WhichOneof("action") == action


def _routes(vhost, patches: list[Patch]) -> None:
    for p in patches:
        if p.operation in (Op.MERGE, Op.REMOVE):
            continue
        if p.value is None:
            continue
        names = [r.name for r in vhost.routes]
        target = p.match.route_configuration.vhost.route.name
        _insert(vhost.routes, names, p.operation, target, p.value)
    removed = [p for p in patches if p.operation == Op.REMOVE]
    if removed:
        _keep(vhost.routes, lambda r: not any(_route_matches(p, r) for p in removed))
    for p in patches:
        if p.operation == Op.MERGE and p.value is not None:
            for route in vhost.routes:
                if _route_matches(p, route):
                    route.MergeFrom(p.value)


# ---- clusters ----------------------------------------------------------------------


def _cluster_context(cluster: cluster_pb2.Cluster, gateway: bool) -> int:
    if gateway:
        return Context.GATEWAY
    if cluster.name.startswith("inbound|"):
        return Context.SIDECAR_INBOUND
    return Context.SIDECAR_OUTBOUND


def _cluster_matches(patch: Patch, cluster: cluster_pb2.Cluster) -> bool:
    if not patch.match.HasField("cluster"):
        return True
    match = patch.match.cluster
    if match.name:
        return match.name == cluster.name
    parts = cluster.name.split("|")
    if len(parts) != 4:
        return not (match.port_number or match.service or match.subset)
    _, port, subset, host = parts
    if match.port_number and str(match.port_number) != port:
        return False
    if match.subset and match.subset != subset:
        return False
    return not (match.service and match.service != host)


def _cluster(cluster: cluster_pb2.Cluster, patches: tuple[Patch, ...], gateway: bool) -> bool:
    context = _cluster_context(cluster, gateway)
    mine = [
        p
        for p in patches
        if p.apply_to == ApplyTo.CLUSTER
        and _context_matches(p, context)
        and _cluster_matches(p, cluster)
    ]
    for p in mine:
        if p.operation == Op.REMOVE:
            return False
    for p in mine:
        if p.operation == Op.MERGE and p.value is not None:
            merge_with_sockets(cluster, p.value)
    return True
