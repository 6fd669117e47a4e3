"""Shape-check a YAML value against a protobuf message type and normalise it for json_format.

json_format already accepts camelCase and snake_case names, but its errors lose the field
path inside lists and maps, and it only takes durations written in seconds. This walker
reports the exact path of the first problem and rewrites Go/Istio-style durations
("3m", "1h30m", "250ms") into the "<seconds>s" form protobuf JSON expects.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from xds_server.config.yaml_lines import Path

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_FREE_FORM = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
# Wrapper messages are written as their bare value in YAML (`consecutive5xxErrors: 3`).
_WRAPPERS = {
    "google.protobuf.BoolValue",
    "google.protobuf.UInt32Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int64Value",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.StringValue",
}

# Real fields of the Istio API that this control plane does not implement yet, by message:
# refused by name as "not supported yet" rather than reported as unknown, which would read
# like a typo. (protos/ leaves them out, so that nothing can set them by accident.)
_CLIENT_TLS = "client TLS to the destination (DestinationRule tls) is not supported yet"
_NOT_SUPPORTED = {
    "meshapi.networking.TrafficPolicy": {
        "tls": _CLIENT_TLS,
        "tunnel": "tunnel settings are not supported yet",
        "proxyProtocol": "proxyProtocol is not supported yet",
        "proxy_protocol": "proxyProtocol is not supported yet",
    },
    "meshapi.networking.TrafficPolicy.PortTrafficPolicy": {"tls": _CLIENT_TLS},
}


class SchemaError(ValueError):
    """A value does not fit the message type; `path` locates it inside the document."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration string ("1h2m3.5s", "250ms"); ValueError if malformed."""
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(
            f'invalid duration "{text}" (use a number with a unit: 10s, 250ms, 3m, 1h)'
        )
    return total


def _fields_by_name(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    names: dict[str, FieldDescriptor] = {}
    for fd in descriptor.fields:
        names[fd.name] = fd
        names[fd.json_name] = fd
    return names


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def _scalar(fd: FieldDescriptor, value: Any, path: Path) -> Any:
    kind = fd.type
    if kind == FieldDescriptor.TYPE_STRING:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SchemaError(path, f"expected a string, got {type(value).__name__}")
        return str(value)
    if kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected true or false, got {value!r}")
        return value
    if kind == FieldDescriptor.TYPE_ENUM:
        names = [v.name for v in fd.enum_type.values]
        if isinstance(value, str) and value in names:
            return value
        raise SchemaError(path, f"invalid value {value!r}; expected one of {', '.join(names)}")
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(path, f"expected a number, got {value!r}")
        return value
    # integers
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(path, f"expected an integer, got {value!r}")
    unsigned = kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64)
    if unsigned and value < 0:
        raise SchemaError(path, f"must not be negative, got {value}")
    return value


def _single(fd: FieldDescriptor, value: Any, path: Path) -> Any:
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        return _scalar(fd, value, path)
    full_name = fd.message_type.full_name
    if full_name == "google.protobuf.Duration":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SchemaError(path, f"expected a duration such as 10s, got {value!r}")
        try:
            seconds = parse_duration(value) if isinstance(value, str) else float(value)
        except ValueError as exc:
            raise SchemaError(path, str(exc)) from None
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    if full_name in _FREE_FORM:
        return value
    if full_name in _WRAPPERS:
        return _scalar(fd.message_type.fields_by_name["value"], value, path)
    if value is None:
        value = {}
    return normalise(fd.message_type, value, path)


def normalise(descriptor: Descriptor, value: Any, path: Path = ()) -> dict[str, Any]:
    """Check `value` against `descriptor`; return a dict json_format.ParseDict accepts."""
    if not isinstance(value, dict):
        raise SchemaError(
            path, f"expected a mapping for {descriptor.name}, got {type(value).__name__}"
        )
    fields = _fields_by_name(descriptor)
    out: dict[str, Any] = {}
    oneofs: dict[str, str] = {}
    for key, item in value.items():
        child = (*path, key)
        fd = fields.get(str(key))
        if fd is None:
            unsupported = _NOT_SUPPORTED.get(descriptor.full_name, {}).get(str(key))
            if unsupported is not None:
                raise SchemaError(child, unsupported)
            known = ", ".join(sorted({f.json_name for f in descriptor.fields}))
            raise SchemaError(child, f'unknown field "{key}" (known fields: {known})')
        if fd.containing_oneof is not None:
            other = oneofs.get(fd.containing_oneof.name)
            if other is not None:
                raise SchemaError(child, f'"{key}" and "{other}" cannot both be set')
            oneofs[fd.containing_oneof.name] = str(key)
        if item is None and fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if _is_map(fd):
            if item is None:
                continue
            if not isinstance(item, dict):
                raise SchemaError(child, f"expected a mapping, got {type(item).__name__}")
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {str(k): _single(value_fd, v, (*child, k)) for k, v in item.items()}
        elif fd.is_repeated:
            if item is None:
                continue
            if not isinstance(item, list):
                raise SchemaError(child, f"expected a list, got {type(item).__name__}")
            out[fd.name] = [_single(fd, v, (*child, i)) for i, v in enumerate(item)]
        else:
            out[fd.name] = _single(fd, item, child)
    return out


def to_message(message_type: type[Message], value: Any) -> Message:
    """Build a message from a YAML value; SchemaError (with path) when it does not fit."""
    normalised = normalise(message_type.DESCRIPTOR, value)
    try:
        return json_format.ParseDict(normalised, message_type())
    except json_format.ParseError as exc:  # shape passed; a value protobuf still refuses
        raise SchemaError((), str(exc)) from None
