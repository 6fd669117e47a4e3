"""Which DestinationRule applies to a host, as seen from a proxy's namespace (Istio §4.1)."""

from __future__ import annotations

from bisect import insort

from protos import destination_rule_pb2
from translators import model
from translators.naming import fqdn, host_matches

Rule = destination_rule_pb2.DestinationRule


def rule_index(config: model.MeshConfig) -> DestinationRuleIndex:
    """The index of `config`'s rules, built once per snapshot and shared by whoever asks
    (the translator, the store's checks); derived from the index of the snapshot it was
    derived from, when that one was built, by the rules that came and went."""
    found = config.__dict__.get(_INDEX)
    if found is None:
        for step in config.lineage:
            ancestor = step.ancestor()
            earlier = ancestor.__dict__.get(_INDEX) if ancestor is not None else None
            if earlier is not None and ancestor.mesh.root_namespace == config.mesh.root_namespace:
                found = earlier.after(step.removed, step.added)
                break
        if found is None:
            found = DestinationRuleIndex(config)
        config.__dict__[_INDEX] = found
    return found


_INDEX = "_destination_rule_index"


class DestinationRuleIndex:
    """DestinationRules by namespace and host, built once per config: lookups are per
    service and per proxy namespace, so a scan of every rule each time is quadratic."""

    def __init__(self, config: model.MeshConfig) -> None:
        self.root = config.mesh.root_namespace
        self.exact: dict[str, dict[str, Rule]] = {}
        self.wildcard: dict[str, list[tuple[str, Rule]]] = {}
        # (namespace, exact host) -> its rules, oldest first: the first one is in force.
        self.claims: dict[tuple[str, str], list[model.ConfigResource]] = {}
        for res in config.of_kind(model.DESTINATION_RULE):  # oldest first: it wins a tie
            pattern = fqdn(res.spec.host, res.namespace)
            if "*" in pattern:
                self.wildcard.setdefault(res.namespace, []).append((pattern, res.spec))
            else:
                self.exact.setdefault(res.namespace, {}).setdefault(pattern, res.spec)
                self.claims.setdefault((res.namespace, pattern), []).append(res)
        for rules in self.wildcard.values():
            rules.sort(key=lambda item: -len(item[0]))  # longer wildcards are more specific

    def after(
        self, removed: tuple[model.ConfigResource, ...], added: tuple[model.ConfigResource, ...]
    ) -> DestinationRuleIndex | None:
        """This index less the `removed` rules plus the `added` ones (other kinds are
        ignored); None when a wildcard rule is among them (build it anew)."""
        removed = tuple(r for r in removed if r.kind == model.DESTINATION_RULE)
        added = tuple(r for r in added if r.kind == model.DESTINATION_RULE)
        if not removed and not added:
            return self
        keys = {(r.namespace, fqdn(r.spec.host, r.namespace)) for r in (*removed, *added)}
        if any("*" in host for _, host in keys):
            return None  # wildcards are kept as patterns: build the index anew
        out = DestinationRuleIndex.__new__(DestinationRuleIndex)
        out.root, out.wildcard = self.root, self.wildcard
        out.exact, out.claims = dict(self.exact), dict(self.claims)
        gone = {id(r) for r in removed}
        for namespace, host in keys:
            rules = [r for r in self.claims.get((namespace, host), ()) if id(r) not in gone]
            for res in added:
                if (res.namespace, fqdn(res.spec.host, res.namespace)) == (namespace, host):
                    insort(rules, res, key=model.ConfigResource.order_key)
            hosts = out.exact[namespace] = dict(out.exact.get(namespace, {}))
            if rules:
                out.claims[(namespace, host)] = rules
                hosts[host] = rules[0].spec
            else:
                out.claims.pop((namespace, host), None)
                hosts.pop(host, None)
                if not hosts:
                    del out.exact[namespace]
        return out

    def lookup(self, host: str, proxy_namespace: str, service_namespace: str) -> Rule | None:
        """The rule for `host`: proxy namespace first, then the service's, then the root's;
        within one, an exact host beats any wildcard. Remembered: every view asks for
        every service several times (clusters, routes, hashing)."""
        found = self.__dict__.get("_found")
        if found is None:
            found = self.__dict__["_found"] = {}
        key = (host, proxy_namespace, service_namespace)
        if key in found:
            return found[key]
        rule = found[key] = self._lookup(host, proxy_namespace, service_namespace)
        return rule

    def _lookup(self, host: str, proxy_namespace: str, service_namespace: str) -> Rule | None:
        for namespace in (proxy_namespace, service_namespace, self.root):
            rule = self.exact.get(namespace, {}).get(host)
            if rule is not None:
                return rule
            for pattern, candidate in self.wildcard.get(namespace, ()):
                if host_matches(pattern, host):
                    return candidate
        return None

    def proxy_override(self, host: str, proxy_namespace: str, service_namespace: str) -> bool:
        """Whether the proxy's namespace has its own rule for `host`, so that its lookup
        differs from other namespaces' (which all fall through to the service's)."""
        if proxy_namespace == service_namespace:
            return False
        if host in self.exact.get(proxy_namespace, {}):
            return True
        return any(host_matches(p, host) for p, _ in self.wildcard.get(proxy_namespace, ()))

    def namespaces_with_rules_for(self, host: str) -> set[str]:
        """Namespaces with a rule of their own for `host`: their proxies may resolve it
        to another rule than the rest of the mesh."""
        memo = self.__dict__.setdefault("_with_rules", {})
        if host not in memo:
            memo[host] = frozenset(self._namespaces_with_rules_for(host))
        return set(memo[host])

    def _namespaces_with_rules_for(self, host: str) -> set[str]:
        found = {ns for ns, rules in self.exact.items() if host in rules}
        found |= {
            ns
            for ns, rules in self.wildcard.items()
            if any(host_matches(pattern, host) for pattern, _ in rules)
        }
        return found
