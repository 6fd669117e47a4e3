"""Which YAML resources made an Envoy resource, found from its name when asked (a debug
question), not carried through every push: a cluster `outbound|port|subset|host` comes
from the Service or ServiceEntry defining the host and the DestinationRule a proxy of
that namespace resolves it to; a virtual host `host:port` from its VirtualService; a
proxy's listeners from the policies that select its workload. EnvoyFilters that apply
to the proxy touch all of them."""

from __future__ import annotations

from typing import Any

from translators import model
from translators.envoy_filter import applicable as envoy_filters
from translators.gateways import selected_gateways
from translators.naming import fqdn, host_matches
from translators.routes import Bindings, gateway_ref, sidecar_virtual_services, vs_hosts
from translators.services import defined_hosts
from translators.sidecar_scope import select_sidecar
from translators.telemetry import applicable as applicable_telemetry

_POLICIES = (model.PEER_AUTHENTICATION, model.AUTHORIZATION_POLICY, model.REQUEST_AUTHENTICATION)


def describe(res: model.ConfigResource) -> str:
    return f"{res.ref} ({res.origin})"


def destination_rule(
    config: model.MeshConfig, host: str, proxy_namespace: str, service_namespace: str
) -> model.ConfigResource | None:
    """The DestinationRule a proxy in `proxy_namespace` uses for `host` (Istio's order:
    the proxy's namespace, the namespace of the resource defining the host, the root's;
    an exact host before wildcards)."""
    rules = config.of_kind(model.DESTINATION_RULE)
    for namespace in (proxy_namespace, service_namespace, config.mesh.root_namespace):
        found = [r for r in rules if r.namespace == namespace]
        exact = [r for r in found if fqdn(r.spec.host, r.namespace) == host]
        if exact:
            return min(exact, key=lambda r: r.order_key())
        wild = [r for r in found if host_matches(fqdn(r.spec.host, r.namespace), host)]
        if wild:
            return max(wild, key=lambda r: len(r.spec.host))
    return None


def for_proxy(
    config: model.MeshConfig, proxy: model.Proxy, clusters: list[str], vhosts: list[str]
) -> dict[str, Any]:
    """The sources of a proxy's clusters, virtual hosts and listeners."""
    definers: dict[str, list[model.ConfigResource]] = {}
    for res in (*config.of_kind(model.SERVICE), *config.of_kind(model.SERVICE_ENTRY)):
        for host in defined_hosts(res):
            definers.setdefault(host, []).append(res)
    patches = [describe(r) for r in envoy_filters(config, proxy)]
    out_clusters = {}
    for name in clusters:
        parts = name.split("|")
        found = []
        if len(parts) == 4 and parts[0] == "outbound":
            host = parts[3]
            defining = definers.get(host, [])
            found += [describe(r) for r in defining]
            service_namespace = defining[0].namespace if defining else ""
            rule = destination_rule(config, host, proxy.namespace, service_namespace)
            if rule is not None:
                found.append(describe(rule))
        out_clusters[name] = found + patches
    bindings = Bindings(sidecar_virtual_services(config))
    bound = _gateway_bound(config, proxy) if proxy.role == "gateway" else None
    out_vhosts = {}
    for name in vhosts:
        host = name.rpartition(":")[0] or name
        if bound is not None:  # a gateway merges every VirtualService bound to it
            found = [
                describe(vs)
                for vs in bound
                if any(host_matches(h, host) or host_matches(host, h) for h in vs_hosts(vs))
            ]
        else:
            owner = bindings.owner(host, definers)
            found = [describe(owner)] if owner is not None else []
        found += [describe(r) for r in definers.get(host, [])]
        out_vhosts[name] = found + patches
    # What selects the workload, as translation picks it.
    chosen = [r for kind in _POLICIES for r in model.workload_policies(config, kind, proxy)]
    chosen += applicable_telemetry(config, proxy)
    sidecar = select_sidecar(config, proxy)
    if sidecar is not None:
        chosen.append(sidecar)
    if proxy.role == "gateway":
        chosen += selected_gateways(config, proxy)
    listeners = [describe(r) for r in chosen]
    return {"clusters": out_clusters, "virtual_hosts": out_vhosts, "listeners": listeners + patches}


def _gateway_bound(config: model.MeshConfig, proxy: model.Proxy) -> list[model.ConfigResource]:
    """The VirtualServices bound to a Gateway that selects this gateway proxy."""
    refs = {f"{gw.namespace}/{gw.name}" for gw in selected_gateways(config, proxy)}
    return [
        vs
        for vs in config.of_kind(model.VIRTUAL_SERVICE)
        if any(gateway_ref(g, vs.namespace) in refs for g in vs.spec.gateways)
    ]
