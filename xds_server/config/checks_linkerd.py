"""Semantic checks of SMI TrafficSplit and Linkerd ServiceProfile."""

from __future__ import annotations

from collections.abc import Iterator

from protos import service_profile_pb2, smi_pb2
from xds_server.config.checks_common import Finding, enabled, optional_duration, regex_error

# The translation writes each weight into a VirtualService weight (int32); Envoy refuses
# weighted clusters whose weights add up past uint32.
MAX_SPLIT_WEIGHT = 0x7FFFFFFF
MAX_WEIGHT_SUM = 0xFFFFFFFF


def check_traffic_split(split: smi_pb2.TrafficSplit) -> Iterator[Finding]:
    if not split.service:
        yield ("spec", "service"), "required: service (the apex service)"
    if not split.backends:
        yield ("spec", "backends"), "required: at least one backend"
    for i, backend in enumerate(split.backends):
        if not backend.service:
            yield ("spec", "backends", i, "service"), "required: backend service"
        if backend.weight < 0:
            yield ("spec", "backends", i, "weight"), f"weight {backend.weight} out of range"
        elif backend.weight > MAX_SPLIT_WEIGHT and enabled("traffic-split-weights"):
            yield (
                ("spec", "backends", i, "weight"),
                f"weight {backend.weight} above the maximum {MAX_SPLIT_WEIGHT}",
            )
    total = sum(max(0, b.weight) for b in split.backends)
    if split.backends and total <= 0:
        yield ("spec", "backends"), "weights must not all be 0"
    elif total > MAX_WEIGHT_SUM and enabled("traffic-split-weights"):
        yield (
            ("spec", "backends"),
            f"weights add up to {total}; Envoy refuses weighted clusters above {MAX_WEIGHT_SUM}",
        )


def check_service_profile(profile: service_profile_pb2.ServiceProfile) -> Iterator[Finding]:
    for i, route in enumerate(profile.routes):
        path = ("spec", "routes", i)
        if not route.name:
            yield (*path, "name"), "required: route name"
        condition = route.condition
        if condition.all or condition.any or condition.HasField("not"):
            yield (*path, "condition"), "all/any/not conditions are not supported yet"
        if not (condition.path_regex or condition.method):
            yield (*path, "condition"), "required: method or pathRegex"
        if condition.path_regex:
            error = regex_error(condition.path_regex)
            if error:
                yield (*path, "condition", "pathRegex"), error
        yield from optional_duration(route, "timeout", (*path, "timeout"))
        for j, response_class in enumerate(route.response_classes):
            cpath = (*path, "responseClasses", j, "condition")
            cond = response_class.condition
            if cond.all or cond.any or cond.HasField("not"):
                yield cpath, "all/any/not conditions are not supported yet"
            status = cond.status
            if cond.HasField("status") and (
                status.min > 599 or (status.max and status.max < status.min)
            ):
                yield (*cpath, "status"), f"invalid status range {status.min}-{status.max}"
    if profile.dst_overrides:
        yield ("spec", "dstOverrides"), "not supported yet: use a TrafficSplit"
    if profile.HasField("retry_budget"):
        budget = profile.retry_budget
        if not budget.retry_ratio >= 0:  # NaN too
            yield ("spec", "retryBudget", "retryRatio"), "must be a number, at least 0"
        # As translated: Envoy's budget_percent (a Percent, at most 100) is ratio * 100.
        elif round(budget.retry_ratio * 100, 4) > 100 and enabled("retry-budget"):
            yield (
                ("spec", "retryBudget", "retryRatio"),
                f"{budget.retry_ratio:g} above 1: Envoy's retry budget is at most 100% "
                "of active requests",
            )
        yield from optional_duration(budget, "ttl", ("spec", "retryBudget", "ttl"))
