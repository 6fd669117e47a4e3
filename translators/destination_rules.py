"""Which DestinationRule applies to a host, as seen from a proxy's namespace (Istio §4.1)."""

from __future__ import annotations

from protos import destination_rule_pb2
from translators import model
from translators.naming import fqdn, host_matches


def _specificity(pattern: str) -> tuple[int, int]:
    """Exact hosts beat wildcards; longer wildcards beat shorter ones."""
    return (0 if "*" in pattern else 1, len(pattern))


def destination_rule_for(
    config: model.MeshConfig, host: str, proxy_namespace: str, service_namespace: str
) -> destination_rule_pb2.DestinationRule | None:
    """The rule for `host`: proxy namespace first, then the service's, then the root's."""
    root = config.mesh.root_namespace
    for namespace in (proxy_namespace, service_namespace, root):
        best: tuple[tuple[int, int], destination_rule_pb2.DestinationRule] | None = None
        for res in config.of_kind(model.DESTINATION_RULE):
            if res.namespace != namespace:
                continue
            pattern = fqdn(res.spec.host, res.namespace)
            if host_matches(pattern, host):
                rank = _specificity(pattern)
                if best is None or rank > best[0]:  # oldest wins a tie (stable order)
                    best = (rank, res.spec)
        if best is not None:
            return best[1]
    return None


def subset_policy(
    rule: destination_rule_pb2.DestinationRule, subset: destination_rule_pb2.Subset | None
) -> destination_rule_pb2.TrafficPolicy:
    """The subset's policy merged over the rule's: each block set in the subset wins whole."""
    merged = destination_rule_pb2.TrafficPolicy()
    merged.CopyFrom(rule.traffic_policy)
    if subset is not None:
        for fd, value in subset.traffic_policy.ListFields():
            getattr(merged, fd.name).CopyFrom(value)
    return merged
