"""EnvoyFilter patch values as Envoy's own messages.

A patch value is YAML for the Envoy message its `applyTo` names (a Listener, an
HttpFilter, a Cluster...). It is parsed here against Envoy's types from xds-protos, with
`typed_config` resolved by its `@type`, so that a wrong field is an error when the file
loads (with its line), not a NACK. A TypedStruct (`udpa.type.v1.TypedStruct` or
`xds.type.v3.TypedStruct`) is parsed against the type it names and sent as that type, so
Envoy sees the same message and MERGE works on it too.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from protos import envoy_filter_pb2

ApplyTo = envoy_filter_pb2.ApplyTo
TYPES: dict[int, type[Message]] = {
    ApplyTo.LISTENER: listener_pb2.Listener,
    ApplyTo.FILTER_CHAIN: listener_components_pb2.FilterChain,
    ApplyTo.NETWORK_FILTER: listener_components_pb2.Filter,
    ApplyTo.HTTP_FILTER: hcm_pb2.HttpFilter,
    ApplyTo.LISTENER_FILTER: listener_components_pb2.ListenerFilter,
    ApplyTo.ROUTE_CONFIGURATION: route_pb2.RouteConfiguration,
    ApplyTo.VIRTUAL_HOST: route_components_pb2.VirtualHost,
    ApplyTo.HTTP_ROUTE: route_components_pb2.Route,
    ApplyTo.CLUSTER: cluster_pb2.Cluster,
}
TYPED_STRUCTS = (
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
)
_PREFIX = "type.googleapis.com/"


class PatchValueError(ValueError):
    """The value does not parse as the message its applyTo names."""


def parse_value(apply_to: int, value: struct_pb2.Struct) -> Message:
    """The patch value as its Envoy message; PatchValueError says what is wrong."""
    return _parse(apply_to, value.SerializeToString(deterministic=True))


@lru_cache(maxsize=1024)
def _parse(apply_to: int, struct_bytes: bytes) -> Message:
    message_type = TYPES[apply_to]
    data = json_format.MessageToDict(struct_pb2.Struct.FromString(struct_bytes))
    data = _resolved(data, "value")
    out = message_type()
    try:
        json_format.ParseDict(data, out)
    except json_format.ParseError as exc:
        raise PatchValueError(f"not a valid {message_type.DESCRIPTOR.full_name}: {exc}") from None
    return out


def _resolved(value: Any, where: str) -> Any:
    """`value` with each TypedStruct replaced by the message it carries, and the module of
    every `@type` imported (json_format finds types in the default pool only)."""
    if isinstance(value, list):
        return [_resolved(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    type_url = value.get("@type")
    if type_url in TYPED_STRUCTS:
        inner_url = value.get("type_url") or value.get("typeUrl")
        if not isinstance(inner_url, str) or not inner_url:
            raise PatchValueError(f"{where}: a TypedStruct needs type_url")
        inner = value.get("value") or {}
        if not isinstance(inner, dict):
            raise PatchValueError(f"{where}.value: a TypedStruct's value is a mapping")
        value = {"@type": inner_url, **inner}
        type_url = inner_url
    if isinstance(type_url, str) and not known_type(type_url):
        raise PatchValueError(f"{where}.@type: {type_url!r} is not a type Envoy 1.40 has")
    return {k: _resolved(v, f"{where}.{k}") for k, v in value.items()}


@lru_cache(maxsize=1024)
def known_type(type_url: str) -> bool:
    """Whether `type_url` names an xds-protos message (importing its module)."""
    from google.protobuf import symbol_database

    name = type_url.removeprefix(_PREFIX)
    pool = symbol_database.Default().pool
    try:
        pool.FindMessageTypeByName(name)
        return True
    except KeyError:
        pass
    package = name.rpartition(".")[0]
    while package and "." in package:  # nested messages: Outer.Inner
        try:
            module = importlib.import_module(package)
        except ImportError:
            package = package.rpartition(".")[0]
            continue
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{info.name}")
        break
    try:
        pool.FindMessageTypeByName(name)
        return True
    except KeyError:
        return False
