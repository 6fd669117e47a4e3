"""Checks that need several resources: references and conflicts between them.

They run on every assembled snapshot, because either side of a reference can change in
a different file. A reference to a subset that no DestinationRule defines is the one that
fails requests (503): the store holds back the change that creates one (store.py). The
other findings are reported only: Istio itself applies both sides (the oldest of two
VirtualServices for one host wins).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from translators import model
from translators.destination_rules import DestinationRuleIndex, rule_index
from translators.memo import PerObject
from translators.naming import fqdn
from translators.routes import gateway_ref, vs_hosts
from translators.services import HTTP_PROTOCOLS, port_protocol
from xds_server.config.checks_envoy import endpoint_findings
from xds_server.config.yaml_lines import Path


@dataclass(frozen=True)
class CrossFinding:
    resource: model.ConfigResource
    path: Path
    message: str
    severity: str = "error"
    # For a dangling subset reference: (destination host, subset, proxy namespace).
    subset_of: tuple[str, str, str] | None = None


def _destinations(vs: model.ConfigResource) -> Iterator[tuple[Path, Any]]:
    """(field path, Destination) of every destination a VirtualService sends traffic to."""
    for i, rule in enumerate(vs.spec.http):
        base = ("spec", "http", i)
        for j, d in enumerate(rule.route):
            yield (*base, "route", j, "destination"), d.destination
        if rule.HasField("mirror"):
            yield (*base, "mirror"), rule.mirror
        for j, m in enumerate(rule.mirrors):
            yield (*base, "mirrors", j, "destination"), m.destination
    for i, rule in enumerate(vs.spec.tcp):
        for j, d in enumerate(rule.route):
            yield ("spec", "tcp", i, "route", j, "destination"), d.destination


@PerObject
def _subset_refs(vs: model.ConfigResource) -> list[tuple[Path, str, str]]:
    """(field path, host, subset) of each destination naming a subset."""
    return [
        (where, fqdn(dest.host, vs.namespace), dest.subset)
        for where, dest in _destinations(vs)
        if dest.subset
    ]


@PerObject
def _subset_hosts(vs: model.ConfigResource) -> frozenset[str]:
    return frozenset(host for _, host, _ in _subset_refs(vs))


def dangling_subsets(config: model.MeshConfig) -> Iterator[CrossFinding]:
    """Routes to a subset that no DestinationRule defines (Envoy answers 503 there), as
    seen from the VirtualService's namespace and from every namespace whose own rule for
    the host its proxies would use instead."""
    rules = rule_index(config)
    for vs in config.of_kind(model.VIRTUAL_SERVICE):
        yield from _vs_dangling(vs, rules)


def dangling_after(
    previous: model.MeshConfig, findings: list[CrossFinding], config: model.MeshConfig
) -> list[CrossFinding]:
    """dangling_subsets(config), given `findings` = dangling_subsets(previous): only the
    VirtualServices that changed, or that route to a host whose DestinationRules changed,
    are checked again (an edit of one file in thousands checks a few)."""
    if previous.mesh.root_namespace != config.mesh.root_namespace:
        return list(dangling_subsets(config))
    removed, added = config.difference(previous)
    changed = [r for r in (*removed, *added) if r.kind == model.DESTINATION_RULE]
    fresh = {id(r) for r in added if r.kind == model.VIRTUAL_SERVICE}
    hosts = {fqdn(r.spec.host, r.namespace) for r in changed}
    if any("*" in h for h in hosts):
        return list(dangling_subsets(config))  # a wildcard rule: any host may move
    kept: dict[int, list[CrossFinding]] = {}
    for finding in findings:
        kept.setdefault(id(finding.resource), []).append(finding)
    rules: DestinationRuleIndex | None = None
    out: list[CrossFinding] = []
    for vs in config.of_kind(model.VIRTUAL_SERVICE):
        if id(vs) not in fresh and (not hosts or hosts.isdisjoint(_subset_hosts(vs))):
            out += kept.get(id(vs), ())
            continue
        if rules is None:
            rules = rule_index(config)
        out += _vs_dangling(vs, rules)
    return out


def _vs_dangling(vs: model.ConfigResource, rules: DestinationRuleIndex) -> Iterator[CrossFinding]:
    for where, host, subset in _subset_refs(vs):
        service_ns = host.split(".")[1] if "." in host else ""
        for namespace in sorted({vs.namespace} | rules.namespaces_with_rules_for(host)):
            dr = rules.lookup(host, namespace, service_ns)
            seen_from = "" if namespace == vs.namespace else f" for proxies in {namespace}"
            if dr is None:
                message = (
                    f"no DestinationRule{seen_from} for {host} defines subset "
                    f'"{subset}"; requests routed there get 503'
                )
            elif all(s.name != subset for s in dr.subsets):
                known = ", ".join(s.name for s in dr.subsets) or "none"
                message = (
                    f'unknown subset "{subset}" of {host} (the DestinationRule'
                    f"{seen_from} defines: {known}); requests routed there get 503"
                )
            else:
                continue
            yield CrossFinding(vs, (*where, "subset"), message, subset_of=(host, subset, namespace))


def _host_conflicts(config: model.MeshConfig) -> Iterator[CrossFinding]:
    owners: dict[str, model.ConfigResource] = {}
    for vs in config.of_kind(model.VIRTUAL_SERVICE):
        if vs.spec.gateways and "mesh" not in vs.spec.gateways:
            continue  # gateways merge VirtualServices for one host
        for i, host in enumerate(vs_hosts(vs)):
            first = owners.setdefault(host, vs)
            if first is not vs:
                yield CrossFinding(
                    vs,
                    ("spec", "hosts", i),
                    f"{host} is already routed by {first.ref} ({first.origin}); the oldest "
                    "VirtualService wins for sidecars, as in Istio",
                    "warning",
                )
    split_hosts: dict[str, model.ConfigResource] = {}
    for split in config.of_kind(model.TRAFFIC_SPLIT):
        host = fqdn(split.spec.service, split.namespace)
        owner = owners.get(host)
        if owner is not None:
            yield CrossFinding(
                split,
                ("spec", "service"),
                f"{host} is routed by {owner.ref} ({owner.origin}), which takes precedence",
                "warning",
            )
        first = split_hosts.setdefault(host, split)
        if first is not split:
            yield CrossFinding(
                split,
                ("spec", "service"),
                f"{host} is already split by {first.ref} ({first.origin}); the oldest wins",
                "warning",
            )


def _gateway_references(config: model.MeshConfig) -> Iterator[CrossFinding]:
    known = {f"{gw.namespace}/{gw.name}" for gw in config.of_kind(model.GATEWAY)}
    for vs in config.of_kind(model.VIRTUAL_SERVICE):
        for i, name in enumerate(vs.spec.gateways):
            ref = gateway_ref(name, vs.namespace)
            if name != "mesh" and ref not in known:
                yield CrossFinding(
                    vs, ("spec", "gateways", i), f"no Gateway {ref}; this binding does nothing"
                )


def _custom_providers(config: model.MeshConfig) -> Iterator[CrossFinding]:
    known = {p.name for p in config.mesh.extension_providers}
    for policy in config.of_kind(model.AUTHORIZATION_POLICY):
        name = policy.spec.provider.name
        if name and name not in known:
            yield CrossFinding(
                policy,
                ("spec", "provider", "name"),
                f"no extension provider {name!r} in the mesh config: the requests this "
                "policy selects are refused (fail closed)",
                "warning",
            )


def _telemetry_providers(config: model.MeshConfig) -> Iterator[CrossFinding]:
    """A Telemetry naming a provider the mesh config does not define: that part of it
    reports nowhere (Istio's built-ins are prometheus and envoy)."""
    known = {p.name for p in config.mesh.extension_providers} | {"prometheus", "envoy"}
    for res in config.of_kind(model.TELEMETRY):
        for section, key in (
            ("tracing", "tracing"),
            ("metrics", "metrics"),
            ("access_logging", "accessLogging"),
        ):
            for i, entry in enumerate(getattr(res.spec, section)):
                for j, provider in enumerate(entry.providers):
                    if provider.name not in known:
                        yield CrossFinding(
                            res,
                            ("spec", key, i, "providers", j, "name"),
                            f"no provider {provider.name!r} in the mesh config's "
                            "extensionProviders (built in: prometheus, envoy); nothing is "
                            "reported to it",
                            "warning",
                        )


def _telemetry_duplicates(config: model.MeshConfig) -> Iterator[CrossFinding]:
    """Istio applies one namespace-wide Telemetry per namespace: the oldest."""
    first: dict[str, model.ConfigResource] = {}
    for res in sorted(config.of_kind(model.TELEMETRY), key=lambda r: r.order_key()):
        if res.spec.HasField("selector") and res.spec.selector.match_labels:
            continue
        kept = first.setdefault(res.namespace, res)
        if kept is not res:
            yield CrossFinding(
                res,
                ("metadata", "name"),
                f"{kept.ref} ({kept.origin}) is this namespace's Telemetry without a "
                "selector; Istio applies only the oldest, so this one does nothing",
                "warning",
            )


@PerObject
def _tcp_ports(res: model.ConfigResource) -> list[tuple[str, int, int]]:
    """(host, port number, port index) of each port of a Service or ServiceEntry that is
    not HTTP (a ServiceEntry counts under its first host)."""
    if res.kind == model.SERVICE:
        host = fqdn(res.name, res.namespace)
        ports = [
            (i, p.port, port_protocol(p.name, p.app_protocol)) for i, p in enumerate(res.spec.ports)
        ]
    else:
        if not res.spec.hosts:
            return []
        host = res.spec.hosts[0]
        ports = [
            (i, p.number, port_protocol(p.name, p.protocol)) for i, p in enumerate(res.spec.ports)
        ]
    return [(host, number, i) for i, number, protocol in ports if protocol not in HTTP_PROTOCOLS]


_PORT_KINDS = (model.SERVICE, model.SERVICE_ENTRY)
# (host, kind's rank, the resource's config order, port index): the order claims are read in.
Claim = tuple[tuple[str, int, tuple[str, str, str], int], int, model.ConfigResource]


@dataclass(frozen=True)
class TcpPorts:
    """Uncaptured sidecars reach TCP services at their outbound address and the service
    port, so one port can serve one TCP service (plain TCP has no host name to tell them apart): the
    first host by name keeps a port, and every other claim of it is a finding. Kept by
    port number, so that a change re-reads the ports it touches."""

    claims: dict[int, tuple[Claim, ...]]
    found: dict[int, tuple[CrossFinding, ...]]

    @classmethod
    def of(cls, config: model.MeshConfig) -> TcpPorts:
        return cls({}, {}).after((), [r for k in _PORT_KINDS for r in config.of_kind(k)])

    def after(
        self, removed: Iterable[model.ConfigResource], added: Iterable[model.ConfigResource]
    ) -> TcpPorts:
        claims = dict(self.claims)
        # By name, not identity: a file written again with the same content may come back
        # as new objects that no change reports, so a later removal names another object.
        gone = {_key(r) for r in removed}
        touched = {number for r in removed for _, number, _ in _tcp_ports(r)}
        fresh: dict[int, list[Claim]] = {}
        for res in added:
            rank = _PORT_KINDS.index(res.kind)
            for host, number, i in _tcp_ports(res):
                fresh.setdefault(number, []).append(((host, rank, res.order_key(), i), i, res))
        found = dict(self.found)
        for number in touched | fresh.keys():
            before = claims.get(number, ())
            kept = [c for c in before if _key(c[2]) not in gone]
            now = tuple(sorted([*kept, *fresh.get(number, ())], key=lambda claim: claim[0]))
            if not now:
                claims.pop(number, None)
                found.pop(number, None)
                continue
            claims[number] = now
            reuse = {}
            if before and before[0][0][0] == now[0][0][0]:  # the same owner: same messages
                reuse = {(id(f.resource), f.path): f for f in found.get(number, ())}
            found[number] = tuple(_port_findings(number, now, reuse))
        return TcpPorts(claims, found)

    def findings(self) -> list[CrossFinding]:
        return [finding for number in sorted(self.found) for finding in self.found[number]]


def _key(resource: model.ConfigResource) -> tuple[str, str, str]:
    return resource.kind, resource.namespace, resource.name


def _port_findings(
    number: int, claims: tuple[Claim, ...], reuse: Mapping[tuple, CrossFinding]
) -> Iterator[CrossFinding]:
    owner = claims[0][0][0] if claims else ""
    for (host, *_), i, res in claims:
        if host == owner:
            continue
        known = reuse.get((id(res), ("spec", "ports", i)))
        if known is not None and known.resource is res:
            yield known
        else:
            yield CrossFinding(
                res,
                ("spec", "ports", i),
                f"TCP port {number} is also {owner}'s; sidecars without capture serve "
                f"it for {owner} only (plain TCP has no host name to route on; captured "
                "sidecars tell them apart by the services' addresses)",
                "warning",
            )


def _tcp_port_conflicts(config: model.MeshConfig) -> list[CrossFinding]:
    return TcpPorts.of(config).findings()


def _endpoint_addresses(config: model.MeshConfig) -> Iterator[CrossFinding]:
    for resource, path, message in endpoint_findings(config):
        yield CrossFinding(resource, path, message)


# Each check and the kinds it reads: a decision that changed none of them keeps the
# check's findings (an edit of one ServiceEntry does not look at every VirtualService).
_CHECKS = (
    (
        _endpoint_addresses,
        frozenset({model.WORKLOAD_ENTRY, model.SERVICE, model.SERVICE_ENTRY}),
    ),
    (_host_conflicts, frozenset({model.VIRTUAL_SERVICE, model.TRAFFIC_SPLIT})),
    (_gateway_references, frozenset({model.GATEWAY, model.VIRTUAL_SERVICE})),
    (_custom_providers, frozenset({model.AUTHORIZATION_POLICY})),
    (_telemetry_providers, frozenset({model.TELEMETRY})),
    (_telemetry_duplicates, frozenset({model.TELEMETRY})),
    (_tcp_port_conflicts, frozenset({model.SERVICE, model.SERVICE_ENTRY})),
)


def cross_check(config: model.MeshConfig) -> list[CrossFinding]:
    """Every finding but dangling subsets (the store computes those once per snapshot)."""
    return [finding for check, _ in _CHECKS for finding in check(config)]


@dataclass(frozen=True)
class CrossChecks:
    """The findings of each check on one snapshot."""

    config: model.MeshConfig | None = None
    results: tuple[tuple[CrossFinding, ...], ...] = ()
    ports: TcpPorts | None = None

    @property
    def findings(self) -> list[CrossFinding]:
        return [finding for found in self.results for finding in found]

    def after(self, config: model.MeshConfig, changed: Iterable[Any] | None) -> CrossChecks:
        """The findings on `config`, given the changes (with a `kind`) from this one's
        snapshot; None when they are not known. Checks that read none of the changed
        kinds keep their findings; the port check re-reads only the ports touched."""
        previous = self.config
        if (
            previous is None
            or changed is None
            or (previous.mesh is not config.mesh and previous.mesh != config.mesh)
        ):
            ports = TcpPorts.of(config)
            results = [
                tuple(ports.findings() if check is _tcp_port_conflicts else check(config))
                for check, _ in _CHECKS
            ]
            return CrossChecks(config, tuple(results), ports)
        kinds = {change.kind for change in changed}
        # Objects replaced by equal ones (a file written again as it was) are no change,
        # but findings name their objects' files and lines: those kinds are read again.
        kinds.update(r.kind for side in config.difference(previous) for r in side)
        ports = self.ports
        results = []
        for (check, reads), kept in zip(_CHECKS, self.results, strict=True):
            if reads.isdisjoint(kinds):
                results.append(kept)
            elif check is _tcp_port_conflicts:
                ports = _ports_after(ports, previous, config)
                results.append(tuple(ports.findings()))
            else:
                results.append(tuple(check(config)))
        return CrossChecks(config, tuple(results), ports)


def _ports_after(
    ports: TcpPorts | None, previous: model.MeshConfig, config: model.MeshConfig
) -> TcpPorts:
    if ports is None:
        return TcpPorts.of(config)
    removed, added = (
        [r for r in side if r.kind in _PORT_KINDS] for side in config.difference(previous)
    )
    return ports.after(removed, added)
