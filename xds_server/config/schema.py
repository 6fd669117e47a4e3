"""Build a protobuf message from a YAML value, checking its shape against the type.

Field names may be camelCase or snake_case, as in JSON. Unlike json_format, every error
names the exact path of the first problem (inside lists and maps too), durations may be
written Go/Istio-style ("3m", "1h30m", "250ms"), bytes as base64 text (as Kubernetes writes
them), and the message is built directly (json_format takes three times as long).
"""

from __future__ import annotations

import base64
import math
import re
import sys
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
_NOT_SUPPORTED = {
    "meshapi.networking.TrafficPolicy": {
        "tunnel": "tunnel settings are not supported yet",
        "proxyProtocol": "proxyProtocol is not supported yet",
        "proxy_protocol": "proxyProtocol is not supported yet",
    },
    "meshapi.networking.ClientTLSSettings": {
        "credentialName": "credentialName is not supported yet on DestinationRules: give "
        "clientCertificate, privateKey and caCertificates files",
        "credential_name": "credentialName is not supported yet on DestinationRules",
    },
    "meshapi.security.AuthorizationPolicy": {
        "targetRef": "targetRef is not supported yet (use selector)",
        "targetRefs": "targetRefs is not supported yet (use selector)",
    },
    "meshapi.mesh.ExtensionProvider": {
        name: "this provider kind is not supported yet (envoyExtAuthzHttp, envoyExtAuthzGrpc, "
        "zipkin, opentelemetry, envoyFileAccessLog and prometheus are)"
        for name in (
            "lightstep",
            "datadog",
            "stackdriver",
            "opencensus",
            "skywalking",
            "envoyHttpAls",
            "envoyTcpAls",
            "envoyOtelAls",
            "sds",
        )
    },
    "meshapi.networking.VirtualService": {
        "tls": "tls routes (TLS by SNI) are not supported yet: route TLS with tcp rules",
    },
    "meshapi.networking.EnvoyFilter": {
        "targetRefs": "targetRefs is not supported yet (use workloadSelector)",
    },
    "meshapi.networking.Patch": {
        "filterClass": "filterClass is not supported yet (place filters with INSERT_BEFORE "
        "or INSERT_AFTER)",
    },
    "meshapi.networking.EnvoyConfigObjectMatch": {
        "proxy": "match.proxy is not supported yet (proxies send no ISTIO_VERSION; select "
        "workloads with workloadSelector)",
    },
    "meshapi.networking.RouteConfigurationMatch": {
        "portName": "portName is not supported yet: use portNumber or name",
    },
    "meshapi.networking.ListenerMatch": {
        "portName": "portName is not supported (deprecated in Istio): use portNumber",
    },
    "meshapi.telemetry.Telemetry": {
        "targetRef": "targetRef is not supported yet (use selector)",
        "targetRefs": "targetRefs is not supported yet (use selector)",
    },
    "meshapi.telemetry.Metrics": {
        key: "not Istio's Telemetry API (this is Mixer's form). Write the labels as tag "
        "overrides: metrics: [{providers: [{name: prometheus}], overrides: [{match: "
        "{metric: REQUEST_COUNT}, tagOverrides: {request_protocol: {value: "
        '"request.protocol"}}}]}]; the value is a CEL expression over Envoy\'s attributes'
        for key in ("dimensions", "name", "unit", "value")
    }
    | {"reportingInterval": "reportingInterval is not supported yet (Prometheus scrapes)"},
    "meshapi.telemetry.Tracing": {
        "useRequestIdForTraceSampling": "useRequestIdForTraceSampling is not supported yet",
    },
    "meshapi.telemetry.CustomTag": {
        "formatter": "formatter custom tags are not supported yet (literal, environment, "
        "header are)",
    },
    "meshapi.security.RequestAuthentication": {
        "targetRef": "targetRef is not supported yet (use selector)",
        "targetRefs": "targetRefs is not supported yet (use selector)",
    },
    "meshapi.security.PeerAuthentication.MutualTLS": {
        "caCertificates": "not Istio's API (PeerAuthentication has no CA field): inbound "
        "mutual TLS trusts the mesh's CA (serve --cacerts to use yours)",
    },
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
        found = fd.enum_type.values_by_name.get(value) if isinstance(value, str) else None
        if found is not None:
            return found.number
        names = [v.name for v in fd.enum_type.values]
        raise SchemaError(path, f"invalid value {value!r}; expected one of {', '.join(names)}")
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(path, f"expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        limit = _FLOAT_MAX if kind == FieldDescriptor.TYPE_FLOAT else sys.float_info.max
        if not math.isfinite(number) or abs(number) > limit:
            raise SchemaError(path, f"expected a finite number in range, got {value!r}")
        return value
    if kind == FieldDescriptor.TYPE_BYTES:
        if isinstance(value, bytes):  # !!binary
            return value
        if not isinstance(value, str):
            raise SchemaError(path, f"expected base64 text, got {type(value).__name__}")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise SchemaError(path, "expected base64 text (as Kubernetes writes bytes)") from None
    # integers
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(path, f"expected an integer, got {value!r}")
    unsigned = kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64)
    if unsigned and value < 0:
        raise SchemaError(path, f"must not be negative, got {value}")
    bits = 32 if kind in _INT32 else 64
    low, high = (0, 1 << bits) if unsigned else (-(1 << (bits - 1)), 1 << (bits - 1))
    if not low <= value < high:
        raise SchemaError(path, f"out of range for a {bits}-bit integer: {value}")
    return value


_FLOAT_MAX = 3.4028234663852886e38  # the largest 32-bit float
_INT32 = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
}


def _set_single(message: Message, fd: FieldDescriptor, value: Any, path: Path) -> None:
    """Set singular field `fd` of `message` from a YAML value."""
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        setattr(message, fd.name, _scalar(fd, value, path))
        return
    _fill_message(getattr(message, fd.name), fd, value, path)


def _fill_message(target: Message, fd: FieldDescriptor, value: Any, path: Path) -> None:
    """Fill `target` (a message field or an element just added) from a YAML value."""
    full_name = fd.message_type.full_name
    if full_name == "google.protobuf.Duration":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SchemaError(path, f"expected a duration such as 10s, got {value!r}")
        try:
            seconds = parse_duration(value) if isinstance(value, str) else float(value)
            target.FromJsonString(f"{seconds:.9f}".rstrip("0").rstrip(".") + "s")
        except ValueError as exc:
            raise SchemaError(path, str(exc)) from None
        return
    if full_name in _FREE_FORM:
        if value is None and full_name != "google.protobuf.Value":
            return  # written empty (`defaultConfig:`): left unset, as JSON null is
        try:
            json_format.ParseDict(value, target)
        except (json_format.ParseError, TypeError, ValueError) as exc:
            raise SchemaError(path, str(exc)) from None
        return
    if full_name in _WRAPPERS:
        target.value = _scalar(fd.message_type.fields_by_name["value"], value, path)
        return
    target.SetInParent()
    _fill(target, {} if value is None else value, path)


def _fill(message: Message, value: Any, path: Path) -> None:
    """Set `message`'s fields from a YAML mapping, checking each against its type."""
    descriptor = message.DESCRIPTOR
    if not isinstance(value, dict):
        raise SchemaError(
            path, f"expected a mapping for {descriptor.name}, got {type(value).__name__}"
        )
    fields = _fields_by_name(descriptor)
    oneofs: dict[str, str] = {}
    spelled: dict[str, str] = {}
    for key, item in value.items():
        child = (*path, key)
        fd = fields.get(str(key))
        if fd is None:
            unsupported = _NOT_SUPPORTED.get(descriptor.full_name, {}).get(str(key))
            if unsupported is not None:
                raise SchemaError(child, unsupported)
            known = ", ".join(sorted({f.json_name for f in descriptor.fields}))
            raise SchemaError(child, f'unknown field "{key}" (known fields: {known})')
        other = spelled.setdefault(fd.name, str(key))
        if other != str(key):
            raise SchemaError(child, f'"{key}" and "{other}" are the same field: write it once')
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
            entries = getattr(message, fd.name)
            value_fd = fd.message_type.fields_by_name["value"]
            if len({str(k) for k in item}) < len(item):
                raise SchemaError(child, "a key is given twice (as text and as another type)")
            key_fd = fd.message_type.fields_by_name["key"]
            for k, v in item.items():
                where = (*child, k)
                # A map keyed by numbers (portLevelMtls) takes them as written, 8080 or "8080".
                map_key = (
                    _scalar(key_fd, k, where)
                    if key_fd.type != FieldDescriptor.TYPE_STRING
                    else str(k)
                )
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    _fill_message(entries[map_key], value_fd, v, where)
                else:
                    entries[map_key] = _scalar(value_fd, v, where)
        elif fd.is_repeated:
            if item is None:
                continue
            if not isinstance(item, list):
                raise SchemaError(child, f"expected a list, got {type(item).__name__}")
            field = getattr(message, fd.name)
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                for i, v in enumerate(item):
                    _fill_message(field.add(), fd, v, (*child, i))
            else:
                field.extend([_scalar(fd, v, (*child, i)) for i, v in enumerate(item)])
        else:
            _set_single(message, fd, item, child)


def to_message(message_type: type[Message], value: Any) -> Message:
    """Build a message from a YAML value; SchemaError (with path) when it does not fit."""
    message = message_type()
    _fill(message, value, ())
    return message
