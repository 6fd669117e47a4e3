"""The DestinationRule policy in force for one (subset, port), as Istio resolves it (§4.7).

Port-level settings replace the top-level connectionPool, loadBalancer and outlierDetection
of their port as a whole; a subset's own blocks then replace the parent's block by block.
"""

from __future__ import annotations

from protos import destination_rule_pb2 as dr_pb2
from translators.memo import PerObject

Rule = dr_pb2.DestinationRule
TrafficPolicy = dr_pb2.TrafficPolicy
_PORT_BLOCKS = ("load_balancer", "connection_pool", "outlier_detection", "tls")
_EMPTY = TrafficPolicy()


def _port_level(policy: TrafficPolicy, port: int | None):
    if port is None:
        return None
    return next((p for p in policy.port_level_settings if p.port.number == port), None)


def _resolve_port(policy: TrafficPolicy, port: int | None) -> TrafficPolicy:
    """`policy` with the port_level_settings entry for `port` applied. Returned messages
    are read-only: without an entry for the port, this is `policy` itself."""
    entry = _port_level(policy, port)
    if entry is None:
        return policy
    out = TrafficPolicy()
    for name in _PORT_BLOCKS:
        if entry.HasField(name):
            getattr(out, name).CopyFrom(getattr(entry, name))
    return out


def effective_policy(
    rule: Rule | None, subset: dr_pb2.Subset | None = None, port: int | None = None
) -> TrafficPolicy:
    """The merged policy for `port` of the rule's host, or of one of its subsets.
    Read-only: it may be the rule's own message."""
    if rule is None:
        return _EMPTY
    merged = _resolve_port(rule.traffic_policy, port)
    if subset is None or not subset.HasField("traffic_policy"):
        return merged
    own = subset.traffic_policy
    entry = _port_level(own, port)
    out = TrafficPolicy()
    for name in _PORT_BLOCKS:
        if entry is not None:
            source = entry if entry.HasField(name) else None
        else:
            source = own if own.HasField(name) else merged
        if source is not None and source.HasField(name):
            getattr(out, name).CopyFrom(getattr(source, name))
    return out


def find_subset(rule: Rule | None, name: str) -> dr_pb2.Subset | None:
    if rule is None or not name:
        return None
    return next((s for s in rule.subsets if s.name == name), None)


def _hashes(rule: Rule) -> bool:
    policies = [rule.traffic_policy, *(s.traffic_policy for s in rule.subsets)]
    return any(
        policy.load_balancer.HasField("consistent_hash")
        or any(p.load_balancer.HasField("consistent_hash") for p in policy.port_level_settings)
        for policy in policies
    )


# Whether any policy of a rule (top level, port level, subsets) hashes consistently: most
# do not, and then no destination of theirs needs its policy resolved to know it.
hashes_consistently = PerObject(_hashes)


# Whether a rule sets any policy (top level or subsets): most set only subsets, and then
# every subset and port has the empty policy.
has_policies = PerObject(
    lambda rule: (
        rule.HasField("traffic_policy")
        or any(subset.HasField("traffic_policy") for subset in rule.subsets)
    )
)
