"""PeerAuthentication: the mutual TLS mode of a workload's inbound port, as Istio decides
it. The most specific policy wins: one selecting the workload (in its namespace; the
oldest when several do), then its namespace's (no selector), then the mesh's (no
selector, in the root namespace); a port-level mode beats the policy's own, and UNSET
inherits from the next policy up. With none at all: PERMISSIVE.
"""

from __future__ import annotations

from collections.abc import Mapping

from protos import peer_authentication_pb2 as pa_pb2
from translators import model
from translators.naming import has_labels

MutualTLS = pa_pb2.PeerAuthentication.MutualTLS
STRICT, PERMISSIVE, DISABLE = "STRICT", "PERMISSIVE", "DISABLE"


def _name(mode: int) -> str | None:
    return None if mode == MutualTLS.UNSET else MutualTLS.Mode.Name(mode)


def _oldest(policies: list[model.ConfigResource]) -> model.ConfigResource | None:
    return min(policies, key=lambda r: r.order_key()) if policies else None


def port_modes(
    config: model.MeshConfig, namespace: str, labels: Mapping[str, str], ports: tuple[int, ...]
) -> dict[int, str]:
    """App port -> STRICT, PERMISSIVE or DISABLE for a workload of `namespace` with
    `labels`."""
    policies = config.of_kind(model.PEER_AUTHENTICATION)
    if not policies:
        return dict.fromkeys(ports, PERMISSIVE)
    root = config.mesh.root_namespace
    own = [p for p in policies if p.namespace == namespace]
    selecting = _oldest(
        [
            p
            for p in own
            if p.spec.HasField("selector") and has_labels(labels, p.spec.selector.match_labels)
        ]
    )
    namespace_wide = _oldest([p for p in own if not p.spec.HasField("selector")])
    mesh_wide = _oldest(
        [p for p in policies if p.namespace == root and not p.spec.HasField("selector")]
    )
    inherited = PERMISSIVE
    for policy in (mesh_wide, namespace_wide):
        if policy is not None:
            inherited = _name(policy.spec.mtls.mode) or inherited
    modes = {}
    for port in ports:
        mode = inherited
        if selecting is not None:
            mode = _name(selecting.spec.mtls.mode) or mode
            if port in selecting.spec.port_level_mtls:
                mode = _name(selecting.spec.port_level_mtls[port].mode) or mode
        modes[port] = mode
    return modes


WORKLOAD_PORT = 0  # proxy_modes' key for ports no service declares (no portLevelMtls)


def proxy_modes(config: model.MeshConfig, proxy: model.Proxy) -> dict[int, str]:
    """The modes of a sidecar's app ports, and (WORKLOAD_PORT) of any other port a
    captured sidecar passes through to its app."""
    ports = (*(p.app_port for p in proxy.ports), WORKLOAD_PORT)
    return port_modes(config, proxy.namespace, proxy.labels, ports)
