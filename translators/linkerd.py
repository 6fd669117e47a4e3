"""SMI TrafficSplit and Linkerd ServiceProfile as the HTTP rules Envoy routes run.

Both become RouteSources (routes.py), the same shape a VirtualService has, so they get
Istio's route translation for free: a TrafficSplit is one weighted rule; a ServiceProfile
is one rule per route (method + full-match path regex) with Linkerd's defaults, then a
catch-all. A ServiceProfile's retryBudget is a cluster setting, returned separately.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.cluster.v3 import circuit_breaker_pb2

from protos import service_profile_pb2 as sp_pb2
from protos import virtual_service_pb2 as vs_pb2
from translators import model
from translators.naming import fqdn
from translators.routes import RouteSource

TRAFFIC_SPLIT = model.TRAFFIC_SPLIT
SERVICE_PROFILE = model.SERVICE_PROFILE
# Linkerd's route timeout when a ServiceProfile route names none.
DEFAULT_TIMEOUT_SECONDS = 10
# Linkerd bounds retries by the budget alone; Envoy needs a count as well.
PROFILE_RETRY_ATTEMPTS = 3
RetryBudget = circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget


def split_destinations(split: model.ConfigResource) -> list[vs_pb2.HTTPRouteDestination]:
    return [
        vs_pb2.HTTPRouteDestination(
            destination=vs_pb2.Destination(host=fqdn(b.service, split.namespace)),
            weight=int(b.weight),
        )
        for b in split.spec.backends
        if b.weight > 0
    ]


def failure_codes(route: sp_pb2.RouteSpec) -> list[int]:
    """Statuses Linkerd counts as failures for this route: the first response class whose
    status range holds the code decides; codes no class holds fail when they are 5xx."""
    codes = []
    for code in range(100, 600):
        verdict = code >= 500
        for response_class in route.response_classes:
            status = response_class.condition.status
            if response_class.condition.HasField("status") and status.min <= code <= (
                status.max or 599
            ):
                verdict = response_class.is_failure
                break
        if verdict:
            codes.append(code)
    return codes


def _match(condition: sp_pb2.RequestMatch) -> vs_pb2.HTTPMatchRequest:
    match = vs_pb2.HTTPMatchRequest()
    if condition.path_regex:
        match.uri.regex = condition.path_regex
    if condition.method:
        match.method.exact = condition.method.upper()
    return match


def profile_rule(
    route: sp_pb2.RouteSpec, destinations: Iterable[vs_pb2.HTTPRouteDestination]
) -> vs_pb2.HTTPRoute:
    rule = vs_pb2.HTTPRoute(name=route.name, route=list(destinations))
    rule.match.append(_match(route.condition))
    if route.HasField("timeout"):
        rule.timeout.CopyFrom(route.timeout)
    else:
        rule.timeout.FromSeconds(DEFAULT_TIMEOUT_SECONDS)
    if route.is_retryable:
        codes = failure_codes(route)
        rule.retries.attempts = PROFILE_RETRY_ATTEMPTS
        if codes == list(range(500, 600)):
            rule.retries.retry_on = "5xx"
        else:
            rule.retries.retry_on = ",".join(["reset", "connect-failure", *map(str, codes)])
    else:
        rule.retries.attempts = 0  # Linkerd never retries a route that is not retryable
    return rule


def route_sources(config: model.MeshConfig) -> dict[str, RouteSource]:
    """Service host -> the rules its TrafficSplit and ServiceProfile make (oldest first)."""
    splits: dict[str, model.ConfigResource] = {}
    for split in config.of_kind(TRAFFIC_SPLIT):
        splits.setdefault(fqdn(split.spec.service, split.namespace), split)
    profiles: dict[str, model.ConfigResource] = {}
    for profile in config.of_kind(SERVICE_PROFILE):
        profiles.setdefault(profile.name.lower(), profile)

    sources: dict[str, RouteSource] = {}
    for host in sorted(set(splits) | set(profiles)):
        split, profile = splits.get(host), profiles.get(host)
        if split is not None:
            destinations = split_destinations(split)
        else:
            destinations = [vs_pb2.HTTPRouteDestination(destination=vs_pb2.Destination(host=host))]
        rules = []
        if profile is not None:
            rules = [profile_rule(route, destinations) for route in profile.spec.routes]
        fallback = vs_pb2.HTTPRoute(name="default", route=destinations)
        if profile is not None:
            fallback.retries.attempts = 0
            fallback.timeout.FromSeconds(DEFAULT_TIMEOUT_SECONDS)
        rules.append(fallback)
        owner = split or profile
        namespace = owner.namespace if owner is not None else model.DEFAULT_NAMESPACE
        sources[host] = RouteSource(namespace, tuple(rules), owner.ref if owner else host)
    return sources


def retry_budgets(config: model.MeshConfig) -> Mapping[str, RetryBudget]:
    """Service host -> Envoy retry budget from its ServiceProfile's retryBudget.

    Linkerd's budget is a ratio of retries to requests over a ttl window, with a floor in
    retries per second; Envoy's is a share of active requests, with a floor in concurrent
    retries. retryRatio maps to budget_percent, minRetriesPerSecond to min_retry_concurrency
    (the closest Envoy has); ttl has no Envoy counterpart."""
    budgets: dict[str, RetryBudget] = {}
    for profile in config.of_kind(SERVICE_PROFILE):
        if not profile.spec.HasField("retry_budget"):
            continue
        spec = profile.spec.retry_budget
        budget = RetryBudget()
        budget.budget_percent.value = round(spec.retry_ratio * 100, 4)
        budget.min_retry_concurrency.value = spec.min_retries_per_second
        budgets.setdefault(profile.name.lower(), budget)
    return budgets
