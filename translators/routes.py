"""VirtualServices and services to the outbound RouteConfiguration (Istio §1.4, §2).

One route configuration serves the sidecar's outbound HTTP proxy listener. Each service
port gets a virtual host whose domains carry explicit ":port" forms (the listener is shared
by every port, so the port in Host is what tells two ports of a service apart); the forms
without a port go to the service's default port (80 if it has one, else its first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from protos import virtual_service_pb2 as vs_pb2
from translators import model
from translators.naming import OUTBOUND_ROUTE_NAME, fqdn, host_matches, outbound_cluster
from translators.services import Service

DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
ZERO = duration_pb2.Duration()


def _previous_hosts() -> rc.RetryPolicy.RetryHostPredicate:
    config = any_pb2.Any()
    config.Pack(previous_hosts_pb2.PreviousHostsPredicate())
    return rc.RetryPolicy.RetryHostPredicate(
        name="envoy.retry_host_predicates.previous_hosts", typed_config=config
    )


def default_retry_policy() -> rc.RetryPolicy:
    """Istio's policy when a route says nothing about retries (§2.6): 2 retries, no 503s.

    Built once: message constructors copy it, so every route gets its own."""
    return _DEFAULT_RETRY


def _build_default_retry() -> rc.RetryPolicy:
    return rc.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=2),
        host_selection_retry_max_attempts=5,
        retry_host_predicate=[_previous_hosts()],
    )


_DEFAULT_RETRY = _build_default_retry()


def string_matcher(match: vs_pb2.StringMatch, ignore_case: bool = False):
    """Envoy StringMatcher for an Istio StringMatch; None means "present with any value"."""
    kind = match.WhichOneof("match_type")
    if kind is None or (kind == "regex" and match.regex == "*"):
        return None
    if kind == "regex":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.regex))
    if kind == "prefix":
        return string_pb2.StringMatcher(prefix=match.prefix, ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=match.exact, ignore_case=ignore_case)


def _header(name: str, match: vs_pb2.StringMatch, invert: bool = False) -> rc.HeaderMatcher:
    matcher = string_matcher(match)
    if matcher is None:
        return rc.HeaderMatcher(name=name, present_match=True, invert_match=invert)
    return rc.HeaderMatcher(
        name=name, string_match=matcher, invert_match=invert, treat_missing_header_as_empty=invert
    )


def route_match(match: vs_pb2.HTTPMatchRequest | None) -> rc.RouteMatch:
    out = rc.RouteMatch(case_sensitive=wrappers_pb2.BoolValue(value=True))
    if match is None:
        out.prefix = "/"
        return out
    out.case_sensitive.value = not match.ignore_uri_case
    uri = match.uri.WhichOneof("match_type") if match.HasField("uri") else None
    if uri == "exact":
        out.path = match.uri.exact
    elif uri == "prefix":
        out.prefix = match.uri.prefix
    elif uri == "regex":
        out.safe_regex.regex = match.uri.regex
    else:
        out.prefix = "/"
    for name in sorted(match.headers):
        out.headers.append(_header(name, match.headers[name]))
    for name in sorted(match.without_headers):
        out.headers.append(_header(name, match.without_headers[name], invert=True))
    for field_name, header in (
        ("method", ":method"),
        ("authority", ":authority"),
        ("scheme", ":scheme"),
    ):
        if match.HasField(field_name):
            out.headers.append(_header(header, getattr(match, field_name)))
    for name in sorted(match.query_params):
        matcher = string_matcher(match.query_params[name])
        if matcher is None:
            out.query_parameters.append(rc.QueryParameterMatcher(name=name, present_match=True))
        else:
            out.query_parameters.append(rc.QueryParameterMatcher(name=name, string_match=matcher))
    return out


def is_catch_all(match: vs_pb2.HTTPMatchRequest | None) -> bool:
    """A match that takes every request: routes after it can never be reached."""
    if match is None:
        return True
    if (
        match.headers
        or match.without_headers
        or match.query_params
        or any(match.HasField(f) for f in ("method", "authority", "scheme"))
    ):
        return False
    if not match.HasField("uri"):
        return True
    kind = match.uri.WhichOneof("match_type")
    return (kind == "prefix" and match.uri.prefix == "/") or (
        kind == "regex" and match.uri.regex == ".*"
    )


def _applies_to(
    match: vs_pb2.HTTPMatchRequest | None,
    port: int | None,
    proxy_ns: str,
    proxy_labels: Mapping[str, str],
) -> bool:
    """Istio's config-time filters: port, sourceLabels and sourceNamespace."""
    if match is None:
        return True
    if match.port and port is not None and match.port != port:
        return False
    if any(proxy_labels.get(k) != v for k, v in match.source_labels.items()):
        return False
    return not (match.source_namespace and match.source_namespace != proxy_ns)


def destination_cluster(
    dest: vs_pb2.Destination,
    vs_namespace: str,
    services: Mapping[str, Service],
    listener_port: int | None,
) -> str:
    """Istio's inference: explicit port, else the service's only port, else the vhost's port."""
    host = fqdn(dest.host, vs_namespace)
    port = dest.port.number
    if not port:
        service = services.get(host)
        if service is not None and len(service.ports) == 1:
            port = service.ports[0].port
        else:
            port = listener_port or 80
    return outbound_cluster(port, host, dest.subset)


def _action(
    rule: vs_pb2.HTTPRoute, vs_namespace: str, services: Mapping[str, Service], port: int | None
) -> rc.RouteAction:
    timeout = rule.timeout if rule.HasField("timeout") else ZERO
    action = rc.RouteAction(
        timeout=timeout,
        retry_policy=default_retry_policy(),
        max_stream_duration=rc.RouteAction.MaxStreamDuration(grpc_timeout_header_max=timeout),
    )
    if len(rule.route) == 1:
        action.cluster = destination_cluster(
            rule.route[0].destination, vs_namespace, services, port
        )
    else:
        for dest in rule.route:
            if dest.weight > 0:
                action.weighted_clusters.clusters.append(
                    rc.WeightedCluster.ClusterWeight(
                        name=destination_cluster(dest.destination, vs_namespace, services, port),
                        weight=wrappers_pb2.UInt32Value(value=dest.weight),
                    )
                )
    return action


def virtual_service_routes(
    vs: model.ConfigResource,
    services: Mapping[str, Service],
    port: int | None,
    proxy_ns: str,
    proxy_labels: Mapping[str, str],
) -> list[rc.Route]:
    """One Envoy route per match entry, in order, stopping after the first catch-all."""
    routes: list[rc.Route] = []
    for rule in vs.spec.http:
        action = None
        for match in list(rule.match) or [None]:
            if not _applies_to(match, port, proxy_ns, proxy_labels):
                continue
            if action is None:
                action = _action(rule, vs.namespace, services, port)
            name = rule.name
            if match is not None and match.name:
                name = f"{rule.name}.{match.name}" if rule.name else match.name
            routes.append(rc.Route(name=name, match=route_match(match), route=action))
            if is_catch_all(match):
                return routes
    return routes


def default_route(host: str, port: int) -> rc.Route:
    return rc.Route(
        name="default",
        match=rc.RouteMatch(prefix="/", case_sensitive=wrappers_pb2.BoolValue(value=True)),
        route=rc.RouteAction(
            cluster=outbound_cluster(port, host),
            timeout=ZERO,
            retry_policy=default_retry_policy(),
            max_stream_duration=rc.RouteAction.MaxStreamDuration(grpc_timeout_header_max=ZERO),
        ),
    )


@dataclass
class _VHost:
    name: str
    routes: list[rc.Route]
    domains: list[tuple[int, str]]  # (priority, domain); priority 0 = full names, claimed first


def _service_domains(service: Service, port: int, proxy_ns: str) -> list[tuple[int, str]]:
    names: list[tuple[int, str]] = [(0, service.hostname), (0, service.hostname + ".")]
    if service.short_name:
        ns_name = f"{service.short_name}.{service.namespace}"
        names += [(1, ns_name), (1, f"{ns_name}.svc")]
        if service.namespace == proxy_ns:
            names.append((1, service.short_name))
    names += [(0, vip) for vip in service.vips]
    with_port = [(prio, f"{name}:{port}") for prio, name in names]
    if port == service.default_port.port:
        return names + with_port
    return with_port


def _sidecar_virtual_services(config: model.MeshConfig) -> list[model.ConfigResource]:
    """VirtualServices bound to sidecars: no `gateways`, or one that names `mesh`."""
    return [
        vs
        for vs in config.of_kind(model.VIRTUAL_SERVICE)
        if not vs.spec.gateways or "mesh" in vs.spec.gateways
    ]


def _bind_hosts(virtual_services: Sequence[model.ConfigResource], services: Iterable[str]):
    """Each service host -> the VirtualService that owns it (exact first, else most specific
    wildcard; the oldest wins a tie); plus the VS hosts that name no service."""
    owner: dict[str, model.ConfigResource] = {}
    wildcard: dict[str, tuple[int, model.ConfigResource]] = {}
    unbound: list[tuple[str, model.ConfigResource]] = []
    service_hosts = set(services)
    for vs in virtual_services:
        for raw in vs.spec.hosts:
            host = fqdn(raw, vs.namespace)
            if host in service_hosts:
                owner.setdefault(host, vs)
                continue
            covered = [svc for svc in service_hosts if "*" in host and host_matches(host, svc)]
            for svc in covered:
                best = wildcard.get(svc)
                if best is None or len(host) > best[0]:
                    wildcard[svc] = (len(host), vs)
            if not covered:
                unbound.append((host, vs))
    for svc, (_, vs) in wildcard.items():
        owner.setdefault(svc, vs)
    return owner, unbound


def outbound_route_config(
    config: model.MeshConfig,
    services: Mapping[str, Service],
    proxy_ns: str,
    proxy_labels: Mapping[str, str],
) -> route_pb2.RouteConfiguration:
    virtual_services = _sidecar_virtual_services(config)
    owner, unbound = _bind_hosts(virtual_services, services)
    vhosts: list[_VHost] = []
    for host in sorted(services):
        service = services[host]
        vs = owner.get(host)
        for port in service.ports:
            if not port.is_http:
                continue
            if vs is not None:
                routes = virtual_service_routes(vs, services, port.port, proxy_ns, proxy_labels)
            else:
                routes = [default_route(host, port.port)]
            vhosts.append(
                _VHost(
                    f"{host}:{port.port}", routes, _service_domains(service, port.port, proxy_ns)
                )
            )
    seen_unbound: set[str] = set()
    for host, vs in unbound:
        if host in seen_unbound:
            continue
        seen_unbound.add(host)
        domains = [(0, host)] if "*" in host else [(0, host), (0, f"{host}:*")]
        routes = virtual_service_routes(vs, services, None, proxy_ns, proxy_labels)
        vhosts.append(_VHost(host, routes, domains))

    # Envoy refuses a domain used twice; the first claim wins, full names before short forms.
    claimed: set[str] = set()
    chosen: dict[str, list[str]] = {v.name: [] for v in vhosts}
    for priority in (0, 1):
        for vhost in vhosts:
            for prio, domain in vhost.domains:
                if prio == priority and domain not in claimed:
                    claimed.add(domain)
                    chosen[vhost.name].append(domain)
    return route_pb2.RouteConfiguration(
        name=OUTBOUND_ROUTE_NAME,
        validate_clusters=wrappers_pb2.BoolValue(value=False),
        virtual_hosts=[
            rc.VirtualHost(
                name=v.name,
                domains=chosen[v.name],
                routes=v.routes,
                include_request_attempt_count=True,
            )
            for v in sorted(vhosts, key=lambda v: v.name)
            if chosen[v.name]
        ],
    )
