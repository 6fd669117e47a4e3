"""`xds-server analyze`: every finding about a config directory, with istioctl analyze's
codes and levels where Istio has the same check, and file:line.

Two sources: the loader's own findings (schema and semantic validation, which Istio's
webhook and analyzers report as IST0106 and others; the cross-resource ones get their
Istio code), and analyzers here for Istio's cross-resource checks that loading does not
make (IST0101 hosts, IST0112, IST0113, IST0118, IST0128/IST0129, IST0130/IST0131,
IST0132, IST0145, IST0151; IST0163 from the loader's Telemetry provider check).
Findings with no Istio counterpart get this project's XDS codes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from translators import model
from translators.naming import fqdn, host_matches
from translators.routes import gateway_ref
from translators.services import build_services, port_protocol
from xds_server.config.cross_checks import _destinations
from xds_server.config.loader import ConfigIssue, ParsedFile, format_path
from xds_server.config.yaml_lines import Path

LEVELS = ("Info", "Warning", "Error")
FOUND_ISSUES_EXIT = 79  # istioctl analyze's exit code when it reports at the threshold


@dataclass(frozen=True)
class Message:
    code: str
    level: str
    resource: str
    file: str
    line: int
    text: str
    field: str = ""

    def __str__(self) -> str:
        where = f"{self.resource} {self.file}:{self.line}".strip()
        return f"{self.level} [{self.code}] ({where}) {self.text}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The loader's cross-resource findings that Istio's analyzers also make: (pattern, code).
_ISTIO_EQUIVALENTS = (
    (re.compile(r"^no Gateway "), "IST0101", "Error"),
    (re.compile(r"defines subset|unknown subset"), "IST0101", "Error"),
    (re.compile(r"is already routed by"), "IST0109", "Error"),
    (re.compile(r"Envoy rejected"), "XDS0003", "Error"),
    (re.compile(r"in the mesh config's extensionProviders"), "IST0163", "Error"),
    (re.compile(r"held back"), "XDS0004", "Warning"),
)


def from_issue(issue: ConfigIssue) -> Message:
    """A loader finding as a message: its Istio code where Istio has the check, else
    IST0106 (schema and validation errors, as Istio's webhook refuses them) or XDS0002
    (warnings this project adds)."""
    for pattern, code, level in _ISTIO_EQUIVALENTS:
        if pattern.search(issue.message):
            return Message(code, level, issue.resource, issue.file, issue.line, issue.message)
    if issue.severity == "error":
        code, level = "IST0106", "Error"
    else:
        code, level = "XDS0002", "Warning"
    text = f"{issue.field}: {issue.message}" if issue.field else issue.message
    return Message(code, level, issue.resource, issue.file, issue.line, text, issue.field)


def analyze(
    config: model.MeshConfig, files: Mapping[str, ParsedFile], issues: Iterable[ConfigIssue]
) -> list[Message]:
    """Every finding, loader's and analyzers', sorted by file and line."""
    found = [from_issue(issue) for issue in issues]
    for resource, path, code, level, text in _analyzers(config):
        parsed = files.get(resource.origin.file)
        doc = parsed.documents.get(resource.key) if parsed is not None else None
        line = doc.line_of(path) if doc else resource.origin.line
        found.append(
            Message(code, level, resource.ref, resource.origin.file, line, text, format_path(path))
        )
    unique = {(m.code, m.file, m.line, m.text): m for m in found}
    return sorted(unique.values(), key=lambda m: (m.file, m.line, m.code))


Finding = tuple[model.ConfigResource, Path, str, str, str]


def _analyzers(config: model.MeshConfig) -> Iterator[Finding]:
    yield from _unknown_hosts(config)
    yield from _sidecars_without_selector(config)
    yield from _unverified_tls(config)
    yield from _unreachable_rules(config)
    yield from _hosts_not_in_gateway(config)
    yield from _conflicting_gateways(config)
    yield from _ambiguous_ports(config)
    yield from _port_names(config)
    yield from _relative_envoy_filters(config)


def _unknown_hosts(config: model.MeshConfig) -> Iterator[Finding]:
    """IST0101: a VirtualService sends traffic to a host no Service or ServiceEntry has."""
    known = build_services(config, ())
    for vs in config.of_kind(model.VIRTUAL_SERVICE):
        for path, destination in _destinations(vs):
            host = fqdn(destination.host, vs.namespace)
            if "*" in host or host in known or any(host_matches(h, host) for h in known):
                continue
            yield (
                vs,
                (*path, "host"),
                "IST0101",
                "Error",
                (f'Referenced host not found: "{destination.host}"'),
            )


def _sidecars_without_selector(config: model.MeshConfig) -> Iterator[Finding]:
    """IST0113: more than one Sidecar without a workloadSelector in a namespace."""
    seen: dict[str, model.ConfigResource] = {}
    for sidecar in sorted(config.of_kind(model.SIDECAR), key=lambda r: r.order_key()):
        if sidecar.spec.HasField("workload_selector") and sidecar.spec.workload_selector.labels:
            continue
        first = seen.setdefault(sidecar.namespace, sidecar)
        if first is not sidecar:
            yield (
                sidecar,
                ("metadata", "name"),
                "IST0113",
                "Error",
                (
                    f"The Sidecars [{first.ref}, {sidecar.ref}] in namespace "
                    f"{sidecar.namespace} have no workload selector"
                ),
            )


_UNVERIFIED = "has TLS mode set to {mode} but server certificate verification is skipped"


def _unverified_tls(config: model.MeshConfig) -> Iterator[Finding]:
    """IST0128 / IST0129: a DestinationRule originates TLS without checking the server's
    certificate (insecureSkipVerify), at the rule's level or a port's."""
    for dr in config.of_kind(model.DESTINATION_RULE):
        policy = dr.spec.traffic_policy
        tls = policy.tls
        if _skips(tls):
            yield (
                dr,
                ("spec", "trafficPolicy", "tls"),
                "IST0128",
                "Warning",
                (
                    f"DestinationRule {dr.ref} "
                    + _UNVERIFIED.format(mode=_mode(tls))
                    + f" for host: {dr.spec.host}"
                ),
            )
        for i, port in enumerate(policy.port_level_settings):
            if _skips(port.tls):
                yield (
                    dr,
                    ("spec", "trafficPolicy", "portLevelSettings", i, "tls"),
                    "IST0129",
                    ("Warning"),
                    (
                        f"DestinationRule {dr.ref} "
                        + _UNVERIFIED.format(mode=_mode(port.tls))
                        + f" for host: {dr.spec.host} port: {port.port.number}"
                    ),
                )


def _skips(tls) -> bool:
    mode = _mode(tls)
    return mode in ("SIMPLE", "MUTUAL") and tls.insecure_skip_verify.value


def _mode(tls) -> str:
    return type(tls).TLSmode.Name(tls.mode)


def _unreachable_rules(config: model.MeshConfig) -> Iterator[Finding]:
    """IST0130: a rule after one that matches everything; IST0131: a match that an
    earlier rule's match already takes."""
    for vs in config.of_kind(model.VIRTUAL_SERVICE):
        seen: set[bytes] = set()
        caught = False
        for i, rule in enumerate(vs.spec.http):
            if caught:
                yield (
                    vs,
                    ("spec", "http", i),
                    "IST0130",
                    "Warning",
                    (
                        f"VirtualService rule #{i} is not used (a rule before it matches "
                        "every request)"
                    ),
                )
                continue
            matches = [_unnamed(m) for m in rule.match]
            if not matches or any(not m for m in matches):
                caught = True
            if matches and all(m and m in seen for m in matches):
                yield (
                    vs,
                    ("spec", "http", i),
                    "IST0130",
                    "Warning",
                    (
                        f"VirtualService rule #{i} is not used (all its matches are used by "
                        "prior rules)"
                    ),
                )
            else:
                for j, match in enumerate(matches):
                    if match and match in seen:
                        yield (
                            vs,
                            ("spec", "http", i, "match", j),
                            "IST0131",
                            "Info",
                            (
                                f"VirtualService rule #{i} match #{j} is not used (an earlier "
                                "rule has the same match)"
                            ),
                        )
            seen.update(matches)


def _unnamed(match) -> bytes:
    """A match without its name, as bytes (a name changes nothing it matches)."""
    copy = type(match)()
    copy.CopyFrom(match)
    copy.ClearField("name")
    return copy.SerializeToString(deterministic=True)


def _hosts_not_in_gateway(config: model.MeshConfig) -> Iterator[Finding]:
    """IST0132: a VirtualService bound to a Gateway none of whose servers has its host."""
    gateways = {f"{gw.namespace}/{gw.name}": gw for gw in config.of_kind(model.GATEWAY)}
    for vs in config.of_kind(model.VIRTUAL_SERVICE):
        for g, name in enumerate(vs.spec.gateways):
            ref = gateway_ref(name, vs.namespace)
            gateway = gateways.get(ref)
            if name == "mesh" or gateway is None:
                continue
            server_hosts = [
                host.partition("/")[2] or host
                for server in gateway.spec.servers
                for host in server.hosts
            ]
            for i, raw in enumerate(vs.spec.hosts):
                host = raw.lower()
                if any(host_matches(s, host) or host_matches(host, s) for s in server_hosts):
                    continue
                yield (
                    vs,
                    ("spec", "hosts", i),
                    "IST0132",
                    "Warning",
                    (
                        f"one or more host [{raw}] defined in VirtualService {vs.ref} not found "
                        f"in Gateway {ref} (spec.gateways[{g}])"
                    ),
                )


def _conflicting_gateways(config: model.MeshConfig) -> Iterator[Finding]:
    """IST0145: Gateways for the same workloads with a port and a host in common."""
    claims: dict[tuple, model.ConfigResource] = {}
    for gw in sorted(config.of_kind(model.GATEWAY), key=lambda r: r.order_key()):
        selector = tuple(sorted(gw.spec.selector.items()))
        for s, server in enumerate(gw.spec.servers):
            for h, host in enumerate(server.hosts):
                key = (selector, server.port.number, host.partition("/")[2] or host)
                first = claims.setdefault(key, gw)
                if first is not gw:
                    yield (
                        gw,
                        ("spec", "servers", s, "hosts", h),
                        "IST0145",
                        "Error",
                        (
                            f"Conflict with gateways {first.ref} (workload selector "
                            f"{dict(selector)}, port {server.port.number}, hosts {host})"
                        ),
                    )


def level_at_least(level: str, threshold: str) -> bool:
    return LEVELS.index(level) >= LEVELS.index(threshold)


def _ambiguous_ports(config: model.MeshConfig) -> Iterator[Finding]:
    """IST0112: a destination without a port, on a service with several."""
    known = build_services(config, ())
    for vs in config.of_kind(model.VIRTUAL_SERVICE):
        for path, destination in _destinations(vs):
            service = known.get(fqdn(destination.host, vs.namespace))
            if service is None or destination.port.number or len(service.ports) < 2:
                continue
            yield (
                vs,
                (*path, "host"),
                "IST0112",
                "Error",
                (
                    f"This VirtualService has a destination, {destination.host}, with more than "
                    "one port: name which one (destination.port.number)"
                ),
            )


def _port_names(config: model.MeshConfig) -> Iterator[Finding]:
    """IST0118: a Service port whose name says no protocol (Istio then sniffs it)."""
    for svc in config.of_kind(model.SERVICE):
        if svc.namespace in _SYSTEM_NAMESPACES:
            continue  # as Istio's analyzer: not the mesh's own services
        for i, port in enumerate(svc.spec.ports):
            prefix = port.name.split("-", 1)[0].lower()
            if port.app_protocol or port_protocol(port.name) != "auto" or prefix == "udp":
                continue
            yield (
                svc,
                ("spec", "ports", i, "name"),
                "IST0118",
                "Info",
                (
                    f"Port name {port.name or '(none)'} (port: {port.port}) doesn't follow the "
                    "naming convention of Istio port (<protocol>[-<suffix>]) and has no "
                    "appProtocol"
                ),
            )


_RELATIVE = ("INSERT_BEFORE", "INSERT_AFTER", "REPLACE")
_SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "istio-system"})


def _relative_envoy_filters(config: model.MeshConfig) -> Iterator[Finding]:
    """IST0151: a relative patch (INSERT_BEFORE, INSERT_AFTER, REPLACE) in an EnvoyFilter
    without a priority: its place depends on the order of others."""
    for ef in config.of_kind(model.ENVOY_FILTER):
        if ef.spec.priority:
            continue
        for i, patch in enumerate(ef.spec.config_patches):
            operation = type(patch.patch).Operation.Name(patch.patch.operation)
            if operation in _RELATIVE:
                yield (
                    ef,
                    ("spec", "configPatches", i, "patch", "operation"),
                    "IST0151",
                    ("Warning"),
                    (
                        f"This EnvoyFilter does not have a priority and has a relative patch "
                        f"operation ({operation}) set which can cause the EnvoyFilter not to be "
                        "applied. Using the INSERT_FIRST or ADD option or setting the priority "
                        "may help in ensuring the EnvoyFilter is applied correctly."
                    ),
                )
