"""Which DestinationRule applies to a host, as seen from a proxy's namespace (Istio §4.1)."""

from __future__ import annotations

from protos import destination_rule_pb2
from translators import model
from translators.naming import fqdn, host_matches

Rule = destination_rule_pb2.DestinationRule


class DestinationRuleIndex:
    """DestinationRules by namespace and host, built once per config: lookups are per
    service and per proxy namespace, so a scan of every rule each time is quadratic."""

    def __init__(self, config: model.MeshConfig) -> None:
        self.root = config.mesh.root_namespace
        self.exact: dict[str, dict[str, Rule]] = {}
        self.wildcard: dict[str, list[tuple[str, Rule]]] = {}
        for res in config.of_kind(model.DESTINATION_RULE):  # oldest first: it wins a tie
            pattern = fqdn(res.spec.host, res.namespace)
            if "*" in pattern:
                self.wildcard.setdefault(res.namespace, []).append((pattern, res.spec))
            else:
                self.exact.setdefault(res.namespace, {}).setdefault(pattern, res.spec)
        for rules in self.wildcard.values():
            rules.sort(key=lambda item: -len(item[0]))  # longer wildcards are more specific

    def lookup(self, host: str, proxy_namespace: str, service_namespace: str) -> Rule | None:
        """The rule for `host`: proxy namespace first, then the service's, then the root's;
        within one, an exact host beats any wildcard."""
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
