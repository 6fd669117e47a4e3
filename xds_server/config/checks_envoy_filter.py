"""Checks on EnvoyFilters: each patch's value parses as the Envoy message its applyTo
names (translators.envoy_filter_values), its operation is one Istio applies there, and
its match fits the object; what Envoy would refuse is an error at its line."""

from __future__ import annotations

from collections.abc import Iterator

from protos import envoy_filter_pb2 as ef_pb2
from translators.envoy_filter_values import TYPES, ApplyTo, PatchValueError, parse_value
from translators.proto_rules import problems
from xds_server.config.checks_common import Finding

Op = ef_pb2.Patch.Operation
ROUTER = "envoy.filters.http.router"
_FILTERS = {ApplyTo.NETWORK_FILTER, ApplyTo.HTTP_FILTER, ApplyTo.LISTENER_FILTER}
_ROUTES = {ApplyTo.ROUTE_CONFIGURATION, ApplyTo.VIRTUAL_HOST, ApplyTo.HTTP_ROUTE}
_LISTENERS = {ApplyTo.LISTENER, ApplyTo.FILTER_CHAIN} | _FILTERS
_OPERATIONS = {
    ApplyTo.LISTENER: {Op.MERGE, Op.ADD, Op.REMOVE},
    ApplyTo.FILTER_CHAIN: {Op.MERGE, Op.ADD, Op.REMOVE},
    ApplyTo.CLUSTER: {Op.MERGE, Op.ADD, Op.REMOVE},
    ApplyTo.ROUTE_CONFIGURATION: {Op.MERGE},
    ApplyTo.VIRTUAL_HOST: {Op.MERGE, Op.ADD, Op.REMOVE, Op.REPLACE},
    ApplyTo.HTTP_ROUTE: {
        Op.MERGE,
        Op.ADD,
        Op.REMOVE,
        Op.INSERT_BEFORE,
        Op.INSERT_AFTER,
        Op.INSERT_FIRST,
    },
}
_ALL_FILTER_OPS = _OPERATIONS[ApplyTo.HTTP_ROUTE] | {Op.REPLACE}
LOCAL_RATE_LIMIT = (
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
)


def check_envoy_filter(spec: ef_pb2.EnvoyFilter) -> Iterator[Finding]:
    for i, patch in enumerate(spec.config_patches):
        where = ("spec", "configPatches", i)
        apply_to = patch.apply_to
        operation = patch.patch.operation
        if apply_to == ApplyTo.INVALID:
            yield (*where, "applyTo"), "required"
            continue
        if apply_to in (ApplyTo.BOOTSTRAP, ApplyTo.EXTENSION_CONFIG):
            yield (
                (*where, "applyTo"),
                (
                    f"{ApplyTo.Name(apply_to)} is not supported yet: the bootstrap is written by "
                    "`xds-server bootstrap`, and no extension config is served (ECDS)"
                ),
            )
            continue
        if operation == Op.INVALID:
            yield (*where, "patch", "operation"), "required"
            continue
        allowed = _OPERATIONS.get(apply_to, _ALL_FILTER_OPS)
        name = ApplyTo.Name(apply_to)
        adding_as = operation in (Op.INSERT_BEFORE, Op.INSERT_AFTER, Op.INSERT_FIRST)
        if operation not in allowed and not (
            adding_as and apply_to in (ApplyTo.LISTENER, ApplyTo.FILTER_CHAIN, ApplyTo.CLUSTER)
        ):
            yield (
                (*where, "patch", "operation"),
                (
                    f"{Op.Name(operation)} does not apply to {name} "
                    f"(use {', '.join(sorted(Op.Name(o) for o in allowed))})"
                ),
            )
            continue
        if apply_to == ApplyTo.HTTP_FILTER and operation == Op.ADD:
            yield (
                (*where, "patch", "operation"),
                (
                    "ADD puts the filter after the router, which Envoy refuses: use "
                    "INSERT_BEFORE with match.listener.filterChain.filter.subFilter.name: "
                    "envoy.filters.http.router"
                ),
            )
            continue
        kind = patch.match.WhichOneof("object_types")
        expected = (
            "cluster"
            if apply_to == ApplyTo.CLUSTER
            else "routeConfiguration"
            if apply_to in _ROUTES
            else "listener"
        )
        if kind is not None and _camel(kind) != expected:
            yield (*where, "match", _camel(kind)), f"{name} patches match a {expected}"
            continue
        if operation == Op.REMOVE:
            if patch.patch.HasField("value"):
                yield (*where, "patch", "value"), "REMOVE takes no value"
            continue
        if not patch.patch.HasField("value"):
            yield (*where, "patch", "value"), f"required: the {TYPES[apply_to].__name__} to use"
            continue
        try:
            value = parse_value(apply_to, patch.patch.value)
        except PatchValueError as exc:
            yield (*where, "patch", "value"), str(exc)
            continue
        # Envoy's own field rules: a whole object for ADD, INSERT and REPLACE; what is
        # set, for a MERGE (the result is checked again when it is made).
        broken = problems(value, partial=operation == Op.MERGE)
        if broken:
            yield (*where, "patch", "value"), f"Envoy would refuse it: {'; '.join(broken)}"
            continue
        if (
            apply_to == ApplyTo.LISTENER
            and operation != Op.MERGE
            and not value.HasField("address")
            and not value.HasField("internal_listener")
        ):
            yield (*where, "patch", "value", "address"), "required: where it listens"
        if apply_to == ApplyTo.HTTP_FILTER and operation == Op.INSERT_AFTER:
            sub = patch.match.listener.filter_chain.filter.sub_filter.name
            if not sub or sub == ROUTER:
                yield (
                    (*where, "patch", "operation"),
                    (
                        "INSERT_AFTER "
                        + (f"{ROUTER}" if sub else "without a subFilter")
                        + " puts the filter after the router, which Envoy refuses: use "
                        "INSERT_BEFORE the router"
                    ),
                )


def envoy_filter_warnings(spec: ef_pb2.EnvoyFilter) -> Iterator[Finding]:
    for i, patch in enumerate(spec.config_patches):
        where = ("spec", "configPatches", i)
        operation = patch.patch.operation
        if operation in (Op.INSERT_BEFORE, Op.INSERT_AFTER, Op.INSERT_FIRST) and (
            patch.apply_to in (ApplyTo.LISTENER, ApplyTo.FILTER_CHAIN, ApplyTo.CLUSTER)
        ):
            yield (*where, "patch", "operation"), "applied as ADD (as Istio applies it)"
        named_ops = (Op.MERGE, Op.REMOVE, Op.REPLACE)
        if patch.apply_to in _FILTERS and operation in named_ops and not _target(patch):
            yield (
                (*where, "match"),
                f"{Op.Name(operation)} needs the filter's name in the match; "
                "without it, this patch does nothing",
            )
        if (
            patch.apply_to == ApplyTo.HTTP_FILTER
            and operation != Op.REMOVE
            and patch.patch.HasField("value")
        ):
            yield from _rate_limit_warnings(patch, where)


def _target(patch) -> str:
    listener = patch.match.listener
    if patch.apply_to == ApplyTo.LISTENER_FILTER:
        return listener.listener_filter
    if patch.apply_to == ApplyTo.NETWORK_FILTER:
        return listener.filter_chain.filter.name
    return listener.filter_chain.filter.sub_filter.name


def _rate_limit_warnings(patch, where) -> Iterator[Finding]:
    """Envoy's local rate limit enforces nothing unless filter_enabled and
    filter_enforced say so (both default to 0%)."""
    try:
        value = parse_value(patch.apply_to, patch.patch.value)
    except PatchValueError:
        return
    if value.typed_config.type_url != LOCAL_RATE_LIMIT:
        return
    from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2

    config = local_rate_limit_pb2.LocalRateLimit()
    value.typed_config.Unpack(config)
    missing = [
        name
        for name in ("filter_enabled", "filter_enforced")
        if not config.HasField(name) or getattr(config, name).default_value.numerator == 0
    ]
    if missing:
        yield (
            (*where, "patch", "value"),
            (
                f"this local rate limit never limits: {' and '.join(missing)} "
                "default to 0% of requests; set them (e.g. default_value: {numerator: 100, "
                "denominator: HUNDRED}, runtime_key: local_rate_limit_enabled)"
            ),
        )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
