"""Which Sidecar resource applies to a proxy, and what it lets the proxy see (Istio §11).

Only `egress[].hosts` and `outboundTrafficPolicy` are honoured. Services a proxy does not
import get no cluster, endpoints or virtual host there: requests for them fall to the
catch-all (PassthroughCluster under ALLOW_ANY, 502 under REGISTRY_ONLY).
"""

from __future__ import annotations

from collections.abc import Mapping

from protos import sidecar_pb2
from translators import model
from translators.naming import has_labels, host_matches
from translators.services import Service

Mode = sidecar_pb2.OutboundTrafficPolicy.Mode


def select_sidecar(config: model.MeshConfig, proxy: model.Proxy) -> model.ConfigResource | None:
    """Workload-selected Sidecar in the proxy's namespace (oldest first), else that
    namespace's Sidecar without selector, else the root namespace's. Gateways have none."""
    if proxy.role != "sidecar":
        return None
    sidecars = config.of_kind(model.SIDECAR)
    for res in sidecars:
        selector = res.spec.workload_selector.labels
        if res.namespace == proxy.namespace and selector and has_labels(proxy.labels, selector):
            return res
    for namespace in (proxy.namespace, config.mesh.root_namespace):
        for res in sidecars:
            if res.namespace == namespace and not res.spec.workload_selector.labels:
                return res
    return None


def _imports(pattern: str, sidecar_ns: str, service: Service) -> bool:
    namespace, _, name = pattern.partition("/")
    if not name:  # Istio requires ns/host; validation refuses other forms
        return False
    if namespace == ".":
        namespace = sidecar_ns
    if namespace != "*" and namespace != service.namespace:
        return False
    return host_matches(name.lower(), service.hostname)


def visible_services(
    services: Mapping[str, Service], sidecar: model.ConfigResource | None
) -> Mapping[str, Service]:
    if sidecar is None or not sidecar.spec.egress:
        return services
    patterns = [h for egress in sidecar.spec.egress for h in egress.hosts]
    return {
        host: service
        for host, service in services.items()
        if any(_imports(p, sidecar.namespace, service) for p in patterns)
    }


def host_visible(host: str, sidecar: model.ConfigResource | None) -> bool:
    """For VirtualService hosts outside the registry: the dnsName part decides."""
    if sidecar is None or not sidecar.spec.egress:
        return True
    for egress in sidecar.spec.egress:
        for pattern in egress.hosts:
            name = pattern.partition("/")[2].lower()
            if host_matches(name, host) or host_matches(host, name):
                return True
    return False


def allow_any(config: model.MeshConfig, sidecar: model.ConfigResource | None) -> bool:
    """The outbound traffic policy: the Sidecar's if it sets one, else the mesh's."""
    for policy in (
        sidecar.spec.outbound_traffic_policy if sidecar is not None else None,
        config.mesh.outbound_traffic_policy,
    ):
        if policy is not None and policy.HasField("mode"):
            return policy.mode == Mode.ALLOW_ANY
    return True
