"""The DestinationRule index of a derived snapshot, derived from the previous index by the
rules that came and went, answers every lookup as one built from nothing: rules for one
host in several namespaces and twice in one (the oldest wins), wildcards, removals."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from translators import model
from translators.destination_rules import DestinationRuleIndex, rule_index
from xds_server.config.loader import parse_file

RULE = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: %(name)s, namespace: %(ns)s, creationTimestamp: "2026-01-0%(day)dT00:00:00Z"}
spec:
  host: "%(host)s"
  trafficPolicy: {loadBalancer: {simple: %(lb)s}}
"""
HOSTS = ["reviews", "*.example.com", "api.example.com"]
NAMESPACES = ["default", "istio-system"]


def _rule(name: int, ns: str, host: str, day: int, lb: str) -> model.ConfigResource:
    text = RULE % {"name": f"r{name}", "ns": ns, "host": host, "day": day, "lb": lb}
    (res,) = parse_file("r.yaml", text).resources
    return res


rules = st.builds(
    _rule,
    st.integers(0, 3),
    st.sampled_from(NAMESPACES),
    st.sampled_from(HOSTS),
    st.integers(1, 9),
    st.sampled_from(["RANDOM", "ROUND_ROBIN"]),
)


def _answers(index: DestinationRuleIndex) -> list:
    return [
        (index.lookup(h, proxy, service), sorted(index.namespaces_with_rules_for(h)))
        for h in ("reviews.default.svc.cluster.local", *HOSTS[1:], "x.example.com")
        for proxy in NAMESPACES
        for service in NAMESPACES
    ]


@settings(max_examples=100, deadline=None)
@given(st.lists(rules, max_size=6), st.lists(st.tuples(st.booleans(), rules), max_size=8))
def test_a_derived_index_answers_as_one_built_from_nothing(start, steps) -> None:
    resources = {r.key: r for r in start}
    config = model.MeshConfig(resources=tuple(resources.values()))
    rule_index(config)
    for remove, res in steps:
        before = dict(resources)
        if remove:
            resources.pop(res.key, None)
        else:
            resources[res.key] = res
        gone = [r for k, r in before.items() if resources.get(k) is not r]
        came = [r for k, r in resources.items() if before.get(k) is not r]
        # The previous snapshot stays alive while the next is derived, as in the store.
        previous, config = config, config.evolve(tuple(resources.values()), gone, came, config.mesh)
        assert _answers(rule_index(config)) == _answers(DestinationRuleIndex(config))
        assert previous is not None


def test_an_older_rule_added_for_a_host_takes_it_over() -> None:
    newer = _rule(1, "default", "reviews", 5, "RANDOM")
    older = _rule(2, "default", "reviews", 2, "ROUND_ROBIN")
    config = model.MeshConfig(resources=(newer,))
    rule_index(config)
    derived = config.evolve((newer, older), [], [older], config.mesh)
    found = rule_index(derived).lookup("reviews.default.svc.cluster.local", "default", "default")
    assert found is older.spec
