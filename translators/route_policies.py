"""Per-route behaviour of an Istio HTTPRoute as Envoy route fields (Istio §2.4–2.10, §4.4).

Each function takes the Istio message and returns the Envoy piece, so routes.py only
assembles them. Constant pieces are built once; protobuf constructors copy them.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, wrappers_pb2

from protos import destination_rule_pb2 as dr_pb2
from protos import virtual_service_pb2 as vs_pb2
from translators.resources import to_any

DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
# gRPC status names Istio accepts in abort.grpcStatus, by code.
_GRPC_NAMES = (
    "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS "
    "PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE "
    "UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED"
)
GRPC_CODES = {name: code for code, name in enumerate(_GRPC_NAMES.split())}  # noqa: SIM905
REDIRECT_CODES = {
    0: rc.RedirectAction.MOVED_PERMANENTLY,
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}
_MILLION = percent_pb2.FractionalPercent.MILLION
_HUNDRED = percent_pb2.FractionalPercent.HUNDRED
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def _build_previous_hosts() -> rc.RetryPolicy.RetryHostPredicate:
    return rc.RetryPolicy.RetryHostPredicate(
        name="envoy.retry_host_predicates.previous_hosts",
        typed_config=to_any(previous_hosts_pb2.PreviousHostsPredicate()),
    )


def _build_default_retry(with_predicate: bool) -> rc.RetryPolicy:
    return rc.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=2),
        host_selection_retry_max_attempts=5,
        retry_host_predicate=[_build_previous_hosts()] if with_predicate else [],
    )


_DEFAULT_RETRY = _build_default_retry(True)
_DEFAULT_RETRY_HASHED = _build_default_retry(False)
_PREVIOUS_PRIORITIES = rc.RetryPolicy.RetryPriority(
    name="envoy.retry_priorities.previous_priorities",
    typed_config=to_any(
        previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2)
    ),
)


def default_retry_policy(hashed: bool = False) -> rc.RetryPolicy:
    """Istio's policy when a route says nothing about retries (§2.6): 2 retries, no 503s.
    A consistently hashed destination keeps retrying the same host (no previous_hosts)."""
    return _DEFAULT_RETRY_HASHED if hashed else _DEFAULT_RETRY


def retry_policy(rule: vs_pb2.HTTPRoute, hashed: bool = False) -> rc.RetryPolicy | None:
    """None when the route turns retries off (a `retries` block with attempts <= 0)."""
    if not rule.HasField("retries"):
        return default_retry_policy(hashed)
    retries = rule.retries
    if retries.attempts <= 0:
        return None
    policy = rc.RetryPolicy()
    policy.CopyFrom(default_retry_policy(hashed))
    policy.num_retries.value = retries.attempts
    if retries.retry_on.strip():
        conditions, codes = split_retry_on(retries.retry_on)
        if codes and "retriable-status-codes" not in conditions:
            conditions.append("retriable-status-codes")
        policy.retry_on = ",".join(conditions)
        policy.retriable_status_codes.extend(codes)
    if retries.HasField("per_try_timeout"):
        policy.per_try_timeout.CopyFrom(retries.per_try_timeout)
    if retries.retry_remote_localities.value:
        policy.retry_priority.CopyFrom(_PREVIOUS_PRIORITIES)
    return policy


def split_retry_on(text: str) -> tuple[list[str], list[int]]:
    """Istio's retryOn: numbers that are HTTP status codes become retriable status codes."""
    conditions: list[str] = []
    codes: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.isdigit() and 100 <= int(part) <= 599:
            codes.append(int(part))
        else:
            conditions.append(part)
    return conditions, codes


def fractional(percent: vs_pb2.Percent) -> percent_pb2.FractionalPercent:
    """Istio percentages are doubles; Envoy's are integers per million."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent.value * 10000), denominator=_MILLION
    )


def fault_config(fault: vs_pb2.HTTPFaultInjection) -> any_pb2.Any | None:
    """Per-route HTTPFault for the HCM's fault filter; None when it injects nothing."""
    out = fault_pb2.HTTPFault()
    if fault.HasField("delay") and fault.delay.HasField("fixed_delay"):
        out.delay.fixed_delay.CopyFrom(fault.delay.fixed_delay)
        out.delay.percentage.CopyFrom(
            fractional(fault.delay.percentage)
            if fault.delay.HasField("percentage")
            else percent_pb2.FractionalPercent(numerator=0, denominator=_HUNDRED)
        )
    abort = fault.abort
    kind = abort.WhichOneof("error_type") if fault.HasField("abort") else None
    if kind is not None:
        if kind == "http_status":
            out.abort.http_status = abort.http_status
        else:
            out.abort.grpc_status = GRPC_CODES[abort.grpc_status]
        if abort.HasField("percentage"):
            out.abort.percentage.CopyFrom(fractional(abort.percentage))
    if not (out.HasField("delay") or out.HasField("abort")):
        return None
    return to_any(out)


def _string_match(match: vs_pb2.StringMatch) -> string_pb2.StringMatcher:
    kind = match.WhichOneof("match_type")
    if kind == "regex":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.regex))
    if kind == "prefix":
        return string_pb2.StringMatcher(prefix=match.prefix)
    return string_pb2.StringMatcher(exact=match.exact)


def cors_config(cors: vs_pb2.CorsPolicy) -> any_pb2.Any:
    out = cors_pb2.CorsPolicy(
        allow_origin_string_match=[_string_match(m) for m in cors.allow_origins],
        allow_methods=",".join(cors.allow_methods),
        allow_headers=",".join(cors.allow_headers),
        expose_headers=",".join(cors.expose_headers),
        forward_not_matching_preflights=wrappers_pb2.BoolValue(
            value=cors.unmatched_preflights != vs_pb2.CorsPolicy.IGNORE
        ),
    )
    out.filter_enabled.default_value.CopyFrom(
        percent_pb2.FractionalPercent(numerator=100, denominator=_HUNDRED)
    )
    if cors.HasField("max_age"):
        out.max_age = str(cors.max_age.seconds)
    if cors.HasField("allow_credentials"):
        out.allow_credentials.value = cors.allow_credentials.value
    return to_any(out)


def mirror_policies(rule: vs_pb2.HTTPRoute, cluster_of) -> list[rc.RouteAction.RequestMirrorPolicy]:
    """`mirror` (+ mirrorPercentage) and `mirrors[]`; 0% omits the mirror."""
    entries: list[tuple[vs_pb2.Destination, vs_pb2.Percent | None]] = []
    if rule.HasField("mirror"):
        entries.append(
            (rule.mirror, rule.mirror_percentage if rule.HasField("mirror_percentage") else None)
        )
    for mirror in rule.mirrors:
        entries.append(
            (mirror.destination, mirror.percentage if mirror.HasField("percentage") else None)
        )
    out = []
    for destination, percent in entries:
        if percent is not None and percent.value <= 0:
            continue
        policy = rc.RouteAction.RequestMirrorPolicy(
            cluster=cluster_of(destination), trace_sampled=wrappers_pb2.BoolValue(value=False)
        )
        policy.runtime_fraction.default_value.CopyFrom(
            fractional(percent)
            if percent is not None
            else percent_pb2.FractionalPercent(numerator=100, denominator=_HUNDRED)
        )
        out.append(policy)
    return out


class HeaderEdits:
    """Header operations for one Envoy object (route or weighted cluster)."""

    def __init__(self) -> None:
        self.request_add: list[base_pb2.HeaderValueOption] = []
        self.request_remove: list[str] = []
        self.response_add: list[base_pb2.HeaderValueOption] = []
        self.response_remove: list[str] = []
        self.host_rewrite = ""

    def add(self, headers: vs_pb2.Headers) -> None:
        for ops, add, remove, is_request in (
            (headers.request, self.request_add, self.request_remove, True),
            (headers.response, self.response_add, self.response_remove, False),
        ):
            for mapping, action in ((ops.set, _OVERWRITE), (ops.add, _APPEND)):
                for key in sorted(mapping):
                    name = key.lower()
                    if name in (":authority", "host"):
                        if is_request and not self.host_rewrite:
                            self.host_rewrite = mapping[key]
                        continue
                    if name.startswith(":"):
                        continue
                    add.append(
                        base_pb2.HeaderValueOption(
                            header=base_pb2.HeaderValue(key=key, value=mapping[key]),
                            append_action=action,
                        )
                    )
            remove.extend(h for h in ops.remove if not h.startswith(":") and h.lower() != "host")

    def apply(self, target) -> None:
        """Write onto an rc.Route or rc.WeightedCluster.ClusterWeight."""
        target.request_headers_to_add.extend(self.request_add)
        target.request_headers_to_remove.extend(self.request_remove)
        target.response_headers_to_add.extend(self.response_add)
        target.response_headers_to_remove.extend(self.response_remove)


def redirect_action(redirect: vs_pb2.HTTPRedirect, listener_port: int | None) -> rc.RedirectAction:
    out = rc.RedirectAction(response_code=REDIRECT_CODES[redirect.redirect_code])
    out.path_redirect = redirect.uri
    if redirect.authority:
        out.host_redirect = redirect.authority
    if redirect.scheme:
        out.scheme_redirect = redirect.scheme
    kind = redirect.WhichOneof("redirect_port")
    if kind == "port":
        port, scheme = redirect.port, redirect.scheme or "http"
        if not ((port == 80 and scheme == "http") or (port == 443 and scheme == "https")):
            out.port_redirect = port
    elif (
        kind == "derive_port"
        and redirect.derive_port == vs_pb2.HTTPRedirect.FROM_REQUEST_PORT
        and listener_port
    ):
        out.port_redirect = listener_port
    return out


def direct_response(response: vs_pb2.HTTPDirectResponse) -> rc.DirectResponseAction:
    out = rc.DirectResponseAction(status=response.status)
    kind = response.body.WhichOneof("specifier") if response.HasField("body") else None
    if kind == "string":
        out.body.inline_string = response.body.string
    elif kind == "bytes":
        out.body.inline_bytes = response.body.bytes
    return out


def apply_rewrite(action: rc.RouteAction, rewrite: vs_pb2.HTTPRewrite) -> None:
    if rewrite.HasField("uri_regex_rewrite"):
        action.regex_rewrite.pattern.regex = rewrite.uri_regex_rewrite.match
        action.regex_rewrite.substitution = rewrite.uri_regex_rewrite.rewrite
    elif rewrite.uri:
        action.prefix_rewrite = rewrite.uri
    if rewrite.authority:
        action.host_rewrite_literal = rewrite.authority


def hash_policies(
    hashing: dr_pb2.LoadBalancerSettings.ConsistentHashLB,
) -> Iterable[rc.RouteAction.HashPolicy]:
    """The route half of consistent hashing; the cluster half is cluster_settings.py's."""
    key = hashing.WhichOneof("hash_key")
    policy = rc.RouteAction.HashPolicy()
    if key == "http_header_name":
        policy.header.header_name = hashing.http_header_name
    elif key == "http_cookie":
        cookie = hashing.http_cookie
        policy.cookie.name = cookie.name
        policy.cookie.path = cookie.path
        if cookie.HasField("ttl"):  # Envoy only mints the cookie when a ttl is given
            policy.cookie.ttl.CopyFrom(cookie.ttl)
    elif key == "use_source_ip":
        policy.connection_properties.source_ip = True
    elif key == "http_query_parameter_name":
        policy.query_parameter.name = hashing.http_query_parameter_name
    else:
        return []
    return [policy]
