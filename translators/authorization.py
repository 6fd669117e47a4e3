"""AuthorizationPolicy -> Envoy RBAC on a sidecar's inbound side, with Istio's semantics.

The policies of a workload are those of the root namespace and of its own namespace
whose selector matches it (or that have none). DENY is evaluated first: a request that
any DENY rule matches is refused; AUDIT rules then mark what they match for the access
log (Envoy's RBAC LOG action: `access_log_hint` metadata, the `rbac.logged` stat) and
decide nothing; then, when any ALLOW policy applies, a request must match one of their
rules (an ALLOW policy without rules allows nothing). A rule matches
when one of its sources, one of its operations and all of its conditions do; a field
left out matches anything. Strings follow Istio: `x*` a prefix, `*x` a suffix, `*` any
value; principals are SPIFFE IDs without `spiffe://` (they need mutual TLS to be
known); request principals are `<iss>/<sub>` of a token the JWT filter verified
(translators.request_authentication), matched on its issuer and subject claims, which
are known only for the issuers the workload's RequestAuthentications name. HTTP ports
get the HTTP RBAC filter; TCP ports the network one, where HTTP-only
fields cannot be checked: an ALLOW rule with them matches nothing there, and a DENY rule
is applied without them (both err on refusing, as Istio does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2

from protos import authorization_policy_pb2 as az_pb2
from translators import ext_authz, model, request_authentication
from translators.resources import to_any

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
ALLOW, DENY, AUDIT, CUSTOM = (
    az_pb2.AuthorizationPolicy.ALLOW,
    az_pb2.AuthorizationPolicy.DENY,
    az_pb2.AuthorizationPolicy.AUDIT,
    az_pb2.AuthorizationPolicy.CUSTOM,
)
_RBAC_ACTION = {DENY: rbac_pb2.RBAC.DENY, AUDIT: rbac_pb2.RBAC.LOG, ALLOW: rbac_pb2.RBAC.ALLOW}
_NAMES = {DENY: "deny", AUDIT: "audit", ALLOW: "allow"}


@dataclass(frozen=True)
class InboundRbac:
    """A workload's JWT and RBAC filters (empty when no policy applies): HTTP, in chain
    order before the router; network, before tcp_proxy."""

    http: tuple[hcm_pb2.HttpFilter, ...] = ()
    network: tuple[listener_components_pb2.Filter, ...] = ()


NONE = InboundRbac()


def applicable(config: model.MeshConfig, proxy: model.Proxy) -> list[model.ConfigResource]:
    """The policies that apply to `proxy`'s workload, oldest first."""
    return model.workload_policies(config, model.AUTHORIZATION_POLICY, proxy)


def inbound_rbac(
    config: model.MeshConfig, proxy: model.Proxy, fetched: Mapping[str, str] | None = None
) -> InboundRbac:
    """The JWT (RequestAuthentication, with the keys `fetched` from jwksUris) and RBAC
    (AuthorizationPolicy) filters of `proxy`'s workload: built once per set of
    applicable policies (parsed resources are kept while their files do not change), so
    the proxies that share policies, and every push after the first, reuse them."""
    fetched = _NOTHING_FETCHED if fetched is None else fetched
    policies = tuple(applicable(config, proxy))
    authn = tuple(request_authentication.applicable(config, proxy))
    if not policies and not authn:
        return NONE
    both = policies + authn
    key = tuple(map(id, both))
    found = _BUILT.get(key)
    if (
        found is not None
        and found[1] is fetched
        and found[2] is config.mesh
        and all(a is b for a, b in zip(found[0], both, strict=True))
    ):
        return found[3]
    jwt = request_authentication.jwt_filter(list(authn), fetched)
    built = _rbac_of(policies, request_authentication.issuers(list(authn)), config.mesh)
    if jwt is not None:
        built = InboundRbac((jwt, *built.http), built.network)
    if len(_BUILT) > 4096:
        _BUILT.clear()
    # Holds the policies (their ids stay theirs) and the mesh config (CUSTOM's providers).
    _BUILT[key] = (both, fetched, config.mesh, built)
    return built


_NOTHING_FETCHED: Mapping[str, str] = {}
_BUILT: dict[tuple[int, ...], tuple[tuple, Mapping[str, str], object, InboundRbac]] = {}


def _rbac_of(
    policies: tuple[model.ConfigResource, ...], issuers: tuple[str, ...], mesh=None
) -> InboundRbac:
    http, network = [], []
    custom = [p for p in policies if p.spec.action == CUSTOM]
    fail_closed: list[model.ConfigResource] = []
    if custom:
        mesh = mesh or model.default_mesh()
        prefix = f"{ext_authz.POLICY_PREFIX}-"  # the ids ext_authz looks for
        rules = _rules(custom, ALLOW, False, issuers, prefix)
        filters, closed = ext_authz.custom_filters(custom, mesh, rules)
        http.extend(filters)
        tcp_rules = _rules(custom, ALLOW, True, issuers, prefix)
        network.extend(ext_authz.custom_network_filters(custom, mesh, tcp_rules))
        if closed:  # no such provider, or two: what they select is refused
            fail_closed = custom
    # As Istio orders them: AUDIT before ALLOW, so that what ALLOW refuses is logged too.
    for action in (DENY, AUDIT, ALLOW):
        chosen = [p for p in policies if p.spec.action == action]
        if action == DENY:
            chosen += fail_closed
        if not chosen:
            continue
        for tcp, out in ((False, http), (True, network)):
            rules = _rules(chosen, action, tcp, issuers)
            if action != ALLOW and not rules.policies:
                continue  # nothing to refuse or to log
            name = _NAMES[action]
            if tcp:
                config_ = network_rbac_pb2.RBAC(rules=rules, stat_prefix=f"rbac_{name}.")
                out.append(
                    listener_components_pb2.Filter(name=NETWORK_RBAC, typed_config=to_any(config_))
                )
            else:
                config_ = http_rbac_pb2.RBAC(rules=rules)
                if action == AUDIT:  # its own counters: rbac.audit.allowed counts what ran
                    config_.rules_stat_prefix = "audit"
                out.append(hcm_pb2.HttpFilter(name=HTTP_RBAC, typed_config=to_any(config_)))
    return InboundRbac(tuple(http), tuple(network))


def _rules(
    policies: list[model.ConfigResource],
    action: int,
    tcp: bool,
    issuers: tuple[str, ...],
    prefix: str = "",
) -> rbac_pb2.RBAC:
    """The RBAC rules of `policies`' rules as `action` treats them (CUSTOM's are ALLOW
    rules that pick what goes to the provider), named after their policy and index."""
    rules = rbac_pb2.RBAC(action=_RBAC_ACTION[action])
    for policy in policies:
        for index, rule in enumerate(policy.spec.rules):
            built = _policy(rule, tcp, action, issuers)
            if built is not None:
                name = f"{prefix}ns[{policy.namespace}]-policy[{policy.name}]-rule[{index}]"
                rules.policies[name].CopyFrom(built)
    return rules


# ---- one rule ------------------------------------------------------------------------

_HTTP_ONLY_OPERATION = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")
_HTTP_ONLY_SOURCE = ("request_principals", "not_request_principals")


def _policy(
    rule: az_pb2.Rule, tcp: bool, action: int, issuers: tuple[str, ...] = ()
) -> rbac_pb2.Policy | None:
    """The RBAC policy of one rule; None when it cannot match on a TCP port (ALLOW)."""
    http_only = (
        any(getattr(to.operation, name) for to in rule.to for name in _HTTP_ONLY_OPERATION)
        or any(c.key.startswith("request.") for c in rule.when)
        or any(getattr(f.source, n) for f in getattr(rule, "from") for n in _HTTP_ONLY_SOURCE)
    )
    if tcp and http_only and action != DENY:
        return None
    sources = [_source(origin.source, tcp, issuers) for origin in getattr(rule, "from")]
    operations = [_operation(to.operation, tcp) for to in rule.to]
    principal_conditions = [
        _principal_condition(c, tcp, issuers) for c in rule.when if _is_source_key(c.key)
    ]
    permission_conditions = [
        _permission_condition(c) for c in rule.when if not _is_source_key(c.key)
    ]
    if tcp:
        permission_conditions = [p for p in permission_conditions if p is not None]
    principals = [_or_ids(sources)] if sources else []
    principals += [p for p in principal_conditions if p is not None]
    permissions = [_or_rules(operations)] if operations else []
    permissions += [p for p in permission_conditions if p is not None]
    return rbac_pb2.Policy(principals=[_and_ids(principals)], permissions=[_and_rules(permissions)])


def _is_source_key(key: str) -> bool:
    return key.startswith(("source.", "remote.", "request.headers[", "request.auth."))


def _source(source: az_pb2.Source, tcp: bool, issuers: tuple[str, ...]) -> rbac_pb2.Principal:
    ids: list[rbac_pb2.Principal] = []
    fields = [
        (source.principals, False, _principal),
        (source.not_principals, True, _principal),
        (source.namespaces, False, _namespace),
        (source.not_namespaces, True, _namespace),
        (source.ip_blocks, False, _ip_block),
        (source.not_ip_blocks, True, _ip_block),
        (source.remote_ip_blocks, False, _remote_ip_block),
        (source.not_remote_ip_blocks, True, _remote_ip_block),
    ]
    if not tcp:  # a token is an HTTP request's
        request_principal = lambda value: _request_principal(value, issuers)  # noqa: E731
        fields += [
            (source.request_principals, False, request_principal),
            (source.not_request_principals, True, request_principal),
        ]
    for values, negate, make in fields:
        if values:
            any_of = _or_ids([make(v) for v in values])
            ids.append(rbac_pb2.Principal(not_id=any_of) if negate else any_of)
    return _and_ids(ids)


def _operation(operation: az_pb2.Operation, tcp: bool) -> rbac_pb2.Permission:
    rules: list[rbac_pb2.Permission] = []
    fields = [
        (operation.ports, False, _port),
        (operation.not_ports, True, _port),
    ]
    if not tcp:
        fields += [
            (operation.hosts, False, _host),
            (operation.not_hosts, True, _host),
            (operation.methods, False, _method),
            (operation.not_methods, True, _method),
            (operation.paths, False, _path),
            (operation.not_paths, True, _path),
        ]
    for values, negate, make in fields:
        if values:
            any_of = _or_rules([make(v) for v in values])
            rules.append(rbac_pb2.Permission(not_rule=any_of) if negate else any_of)
    return _and_rules(rules)


def _principal_condition(
    condition: az_pb2.Condition, tcp: bool, issuers: tuple[str, ...]
) -> rbac_pb2.Principal | None:
    key = condition.key
    if key.startswith("request.auth."):
        if tcp:
            return None
        make = _auth_maker(key, issuers)
    elif key == "source.ip":
        make = _ip_block
    elif key == "remote.ip":
        make = _remote_ip_block
    elif key == "source.namespace":
        make = _namespace
    elif key == "source.principal":
        make = _principal
    elif key.startswith("request.headers["):
        if tcp:  # no headers there: a DENY rule is applied without it, as Istio does
            return None
        name = key[len("request.headers[") : -1]
        make = lambda value, name=name: rbac_pb2.Principal(header=_header(name, value))  # noqa: E731
    else:
        return None
    return _both_ids(condition, make)


def _permission_condition(condition: az_pb2.Condition) -> rbac_pb2.Permission | None:
    if condition.key == "destination.port":
        return _both_rules(condition, _port)
    if condition.key == "destination.ip":
        return _both_rules(condition, _destination_ip)
    if condition.key == "connection.sni":
        return _both_rules(
            condition, lambda v: rbac_pb2.Permission(requested_server_name=_string(v))
        )
    return None


def _both_ids(condition, make) -> rbac_pb2.Principal:
    parts = []
    if condition.values:
        parts.append(_or_ids([make(v) for v in condition.values]))
    if condition.not_values:
        parts.append(rbac_pb2.Principal(not_id=_or_ids([make(v) for v in condition.not_values])))
    return _and_ids(parts)


def _both_rules(condition, make) -> rbac_pb2.Permission:
    parts = []
    if condition.values:
        parts.append(_or_rules([make(v) for v in condition.values]))
    if condition.not_values:
        parts.append(
            rbac_pb2.Permission(not_rule=_or_rules([make(v) for v in condition.not_values]))
        )
    return _and_rules(parts)


# ---- values --------------------------------------------------------------------------


def _string(value: str, ignore_case: bool = False) -> string_pb2.StringMatcher:
    """Istio's forms: `*` any (present), `x*` prefix, `*x` suffix, else exact."""
    if value == "*":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=value[:-1], ignore_case=ignore_case)
    if value.startswith("*"):
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=value, ignore_case=ignore_case)


def _principal(value: str) -> rbac_pb2.Principal:
    """A peer's SPIFFE ID: `*` any authenticated peer, `x*` / `*x` a prefix / suffix."""
    if value == "*":
        name = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
    elif value.endswith("*"):
        name = string_pb2.StringMatcher(prefix=f"spiffe://{value[:-1]}")
    elif value.startswith("*"):
        name = string_pb2.StringMatcher(suffix=value[1:])
    else:
        name = string_pb2.StringMatcher(exact=f"spiffe://{value}")
    return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=name))


def _namespace(value: str) -> rbac_pb2.Principal:
    if value == "*":
        pattern = "[^/]+"
    elif value.endswith("*"):  # Istio's prefix and suffix forms
        pattern = _escape(value[:-1]) + "[^/]*"
    elif value.startswith("*"):
        pattern = "[^/]*" + _escape(value[1:])
    else:
        pattern = _escape(value)
    regex = regex_pb2.RegexMatcher(regex=f"spiffe://[^/]+/ns/{pattern}/sa/[^/]+")
    return rbac_pb2.Principal(
        authenticated=rbac_pb2.Principal.Authenticated(
            principal_name=string_pb2.StringMatcher(safe_regex=regex)
        )
    )


def _escape(text: str) -> str:
    return "".join(f"\\{c}" if not c.isalnum() and c not in "-_" else c for c in text)


def _cidr(value: str) -> address_pb2.CidrRange:
    address, _, length = value.partition("/")
    prefix = int(length) if length else (128 if ":" in address else 32)
    return address_pb2.CidrRange(address_prefix=address, prefix_len={"value": prefix})


def _ip_block(value: str) -> rbac_pb2.Principal:
    """The peer's own address (ipBlocks, source.ip)."""
    return rbac_pb2.Principal(direct_remote_ip=_cidr(value))


def _remote_ip_block(value: str) -> rbac_pb2.Principal:
    """The original client's address as Envoy derives it (X-Forwarded-For on a gateway
    that trusts it; else the peer's): remoteIpBlocks, remote.ip."""
    return rbac_pb2.Principal(remote_ip=_cidr(value))


def _destination_ip(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(destination_ip=_cidr(value))


# ---- verified tokens (the JWT filter's metadata) -------------------------------------

_NEVER = rbac_pb2.Principal(not_id=rbac_pb2.Principal(any=True))
_CLAIM_KEYS = {"request.auth.audiences": ("aud",), "request.auth.presenter": ("azp",)}


def claim_path(key: str) -> tuple[str, ...] | None:
    """The claim a `request.auth.*` key names (`claims[a][b]`: nested), or None."""
    if key in _CLAIM_KEYS:
        return _CLAIM_KEYS[key]
    head = "request.auth.claims"
    if not key.startswith(head + "[") or not key.endswith("]"):
        return None
    parts = key[len(head) + 1 : -1].split("][")
    return tuple(parts) if all(p and "[" not in p and "]" not in p for p in parts) else None


def _auth_maker(key: str, issuers: tuple[str, ...]):
    if key == "request.auth.principal":
        return lambda value: _request_principal(value, issuers)
    path = claim_path(key)
    if path is None:  # validation refuses it; never an open door
        return lambda value: _NEVER
    return lambda value: _claim(path, _string(value))


def _claim(path: tuple[str, ...], match: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    """A claim that is the string, or a list holding it (`groups`, `aud`)."""
    return _or_ids(
        [
            _metadata(path, value_pb2.ValueMatcher(string_match=match)),
            _metadata(
                path,
                value_pb2.ValueMatcher(
                    list_match=value_pb2.ListMatcher(
                        one_of=value_pb2.ValueMatcher(string_match=match)
                    )
                ),
            ),
        ]
    )


def _metadata(path: tuple[str, ...], value: value_pb2.ValueMatcher) -> rbac_pb2.Principal:
    segments = [
        metadata_pb2.MetadataMatcher.PathSegment(key=k)
        for k in (request_authentication.PAYLOAD_KEY, *path)
    ]
    return rbac_pb2.Principal(
        metadata=metadata_pb2.MetadataMatcher(
            filter=request_authentication.JWT_FILTER, path=segments, value=value
        )
    )


def _iss_sub(issuer: str, sub: string_pb2.StringMatcher | None) -> rbac_pb2.Principal:
    iss = _metadata(
        ("iss",), value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=issuer))
    )
    if sub is None:
        return iss
    return _and_ids([iss, _metadata(("sub",), value_pb2.ValueMatcher(string_match=sub))])


def _request_principal(value: str, issuers: tuple[str, ...]) -> rbac_pb2.Principal:
    """Istio's `<iss>/<sub>` (with `*`, `x*`, `*x`) as matches of the token's `iss` and
    `sub` claims: the issuer may hold `/` too, so each issuer the workload verifies
    splits the value its own way (one that none verifies can never match)."""
    if value == "*":
        return _metadata(("iss",), value_pb2.ValueMatcher(present_match=True))
    options: list[rbac_pb2.Principal] = []
    for issuer in issuers:
        head = issuer + "/"
        if value.endswith("*"):
            prefix = value[:-1]
            if head.startswith(prefix):
                options.append(_iss_sub(issuer, None))
            elif prefix.startswith(head):
                rest = prefix[len(head) :]
                options.append(_iss_sub(issuer, string_pb2.StringMatcher(prefix=rest)))
        elif value.startswith("*"):
            suffix = value[1:]
            options.append(_iss_sub(issuer, string_pb2.StringMatcher(suffix=suffix)))
            for cut in range(1, len(suffix) + 1):  # the suffix reaches into the issuer
                if head.endswith(suffix[:cut]):
                    sub = string_pb2.StringMatcher(exact=suffix[cut:])
                    options.append(_iss_sub(issuer, sub))
        elif value.startswith(head):
            sub = string_pb2.StringMatcher(exact=value[len(head) :])
            options.append(_iss_sub(issuer, sub))
    return _or_ids(options) if options else _NEVER


def _header(name: str, value: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, string_match=_string(value))


def _method(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(header=rc.HeaderMatcher(name=":method", string_match=_string(value)))


def _host(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(
        header=rc.HeaderMatcher(name=":authority", string_match=_string(value, ignore_case=True))
    )


def _path(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=_string(value)))


def _port(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(destination_port=int(value))


# ---- combinators (an empty list matches anything) -------------------------------------


def _and_ids(ids: list[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if not ids:
        return rbac_pb2.Principal(any=True)
    if len(ids) == 1:
        return ids[0]
    return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=ids))


def _or_ids(ids: list[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if len(ids) == 1:
        return ids[0]
    return rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=ids))


def _and_rules(rules: list[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if not rules:
        return rbac_pb2.Permission(any=True)
    if len(rules) == 1:
        return rules[0]
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=rules))


def _or_rules(rules: list[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if len(rules) == 1:
        return rules[0]
    return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=rules))
