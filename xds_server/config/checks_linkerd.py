"""Semantic checks of SMI TrafficSplit and Linkerd ServiceProfile."""

from __future__ import annotations

from collections.abc import Iterator

from protos import service_profile_pb2, smi_pb2
from xds_server.config.checks_common import Finding, optional_duration, regex_error


def check_traffic_split(split: smi_pb2.TrafficSplit) -> Iterator[Finding]:
    if not split.service:
        yield ("spec", "service"), "required: service (the apex service)"
    if not split.backends:
        yield ("spec", "backends"), "required: at least one backend"
    for i, backend in enumerate(split.backends):
        if not backend.service:
            yield ("spec", "backends", i, "service"), "required: backend service"
        if backend.weight < 0 or backend.weight > 0xFFFFFFFF:
            yield ("spec", "backends", i, "weight"), f"weight {backend.weight} out of range"
    if split.backends and sum(max(0, b.weight) for b in split.backends) <= 0:
        yield ("spec", "backends"), "weights must not all be 0"


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
        if not 0 <= budget.retry_ratio <= 100:
            yield ("spec", "retryBudget", "retryRatio"), "must be between 0 and 100"
        yield from optional_duration(budget, "ttl", ("spec", "retryBudget", "ttl"))
