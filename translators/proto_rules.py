"""Envoy's own field rules (protoc-gen-validate annotations in xds-protos), checked in
Python: what Envoy refuses with "...ValidationError..." is found before it is sent.

The common rules are covered: required messages and oneofs, string and bytes lengths,
numeric and duration bounds, repeated item counts (and rules on each item), enums
defined, and `typed_config` Anys unpacked and checked by their own type. A `partial`
check (an EnvoyFilter MERGE value, which is merged into a whole) checks only the values
that are set.
"""

from __future__ import annotations

from google.protobuf import any_pb2, duration_pb2, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from validate import validate_pb2

_NUMERIC = ("int32", "int64", "uint32", "uint64", "sint32", "sint64", "double", "float")
_NUMERIC += ("fixed32", "fixed64", "sfixed32", "sfixed64")
MAX_PROBLEMS = 5
_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String")
}


def problems(message: Message, partial: bool = False, path: str = "") -> list[str]:
    """What Envoy's field rules refuse in `message` ("path: why"), first few only."""
    found: list[str] = []
    _check(message, partial, path, found)
    return found[:MAX_PROBLEMS]


def _check(message: Message, partial: bool, path: str, found: list[str]) -> None:
    if len(found) >= MAX_PROBLEMS:
        return
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Any":
        _check_any(message, partial, path, found)
        return
    if descriptor.full_name == "google.protobuf.Duration":
        if message.seconds < 0 or message.nanos < 0:  # Envoy refuses any, everywhere
            found.append(f"{path}: a negative duration")
        return
    for oneof in descriptor.oneofs:
        required = oneof.GetOptions().Extensions[validate_pb2.required]
        if required and not partial and message.WhichOneof(oneof.name) is None:
            found.append(f"{_at(path, oneof.name)}: one of {_names(oneof)} is required")
    for field in descriptor.fields:
        rules = field.GetOptions().Extensions[validate_pb2.rules]
        where = _at(path, field.name)
        if field.is_repeated:
            values = getattr(message, field.name)
            if _is_map(field):
                for value in values.values() if _map_of_messages(field) else ():
                    _check(value, partial, where, found)
                continue
            _repeated(rules, values, partial, where, found)
            for i, item in enumerate(values):
                if rules.HasField("repeated") and rules.repeated.HasField("items"):
                    _value(rules.repeated.items, field, item, partial, f"{where}[{i}]", found)
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    _check(item, partial, f"{where}[{i}]", found)
            continue
        present = _present(message, field)
        if not present and field.containing_oneof is not None:
            continue  # another member (or none) is chosen: its own rules do not apply
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if rules.HasField("message") and rules.message.required and not present:
                if not partial:
                    found.append(f"{where}: required")
                continue
            if rules.HasField("duration") and rules.duration.required and not present:
                if not partial:
                    found.append(f"{where}: required")
                continue
        if not present:
            if not partial and field.type == FieldDescriptor.TYPE_STRING:
                _string(rules, "", where, found)
            continue
        value = getattr(message, field.name)
        _value(rules, field, value, partial, where, found)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            _check(value, partial, where, found)


def _value(rules, field, value, partial: bool, where: str, found: list[str]) -> None:
    kind = rules.WhichOneof("type")
    if isinstance(value, Message) and value.DESCRIPTOR.full_name in _WRAPPERS:
        value = value.value  # a wrapper's rules are its value's
    if kind == "string":
        _string(rules, value, where, found)
    elif kind == "bytes":
        if rules.bytes.min_len and len(value) < rules.bytes.min_len:
            found.append(f"{where}: at least {rules.bytes.min_len} bytes")
    elif kind in _NUMERIC:
        _bounds(getattr(rules, kind), value, where, found)
    elif kind == "enum":
        if rules.enum.defined_only and field.enum_type.values_by_number.get(value) is None:
            found.append(f"{where}: {value} is not a value of {field.enum_type.name}")
        if rules.enum.not_in and value in rules.enum.not_in:
            found.append(f"{where}: not allowed")
    elif kind == "duration" and isinstance(value, duration_pb2.Duration):
        _durations(rules.duration, value, where, found)


def _string(rules, value: str, where: str, found: list[str]) -> None:
    if rules.WhichOneof("type") != "string":
        return
    string = rules.string
    if string.min_len and len(value) < string.min_len:
        found.append(f"{where}: at least {string.min_len} character(s)")
    elif string.min_bytes and len(value.encode()) < string.min_bytes:
        found.append(f"{where}: at least {string.min_bytes} byte(s)")
    if string.max_len and len(value) > string.max_len:
        found.append(f"{where}: at most {string.max_len} characters")
    if string.max_bytes and len(value.encode()) > string.max_bytes:
        found.append(f"{where}: at most {string.max_bytes} bytes")
    if string.HasField("prefix") and value and not value.startswith(string.prefix):
        found.append(f"{where}: must start with {string.prefix!r}")
    if list(string.__getattribute__("in")) and value not in string.__getattribute__("in"):
        found.append(f"{where}: one of {', '.join(string.__getattribute__('in'))}")


def _bounds(rules, value, where: str, found: list[str]) -> None:
    for name, ok, word in (
        ("gt", lambda v, b: v > b, "greater than"),
        ("gte", lambda v, b: v >= b, "at least"),
        ("lt", lambda v, b: v < b, "less than"),
        ("lte", lambda v, b: v <= b, "at most"),
    ):
        if rules.HasField(name) and not ok(value, getattr(rules, name)):
            found.append(f"{where}: {value} must be {word} {getattr(rules, name)}")


def _durations(rules, value: duration_pb2.Duration, where: str, found: list[str]) -> None:
    seconds = value.seconds + value.nanos / 1e9
    for name, ok, word in (
        ("gt", lambda v, b: v > b, "greater than"),
        ("gte", lambda v, b: v >= b, "at least"),
        ("lt", lambda v, b: v < b, "less than"),
        ("lte", lambda v, b: v <= b, "at most"),
    ):
        if rules.HasField(name):
            bound = getattr(rules, name)
            limit = bound.seconds + bound.nanos / 1e9
            if not ok(seconds, limit):
                found.append(f"{where}: {seconds:g}s must be {word} {limit:g}s")


def _repeated(rules, values, partial: bool, where: str, found: list[str]) -> None:
    if rules.WhichOneof("type") != "repeated":
        return
    count = len(values)
    if rules.repeated.min_items and count < rules.repeated.min_items and not partial:
        found.append(f"{where}: at least {rules.repeated.min_items} item(s)")
    if rules.repeated.max_items and count > rules.repeated.max_items:
        found.append(f"{where}: at most {rules.repeated.max_items} item(s)")


def _check_any(value: any_pb2.Any, partial: bool, path: str, found: list[str]) -> None:
    name = value.type_url.rpartition("/")[2]
    try:
        message_type = symbol_database.Default().GetSymbol(name)
    except KeyError:
        return  # a type this process does not know: Envoy judges
    inner = message_type()
    if value.Unpack(inner):
        _check(inner, partial, path, found)


def _present(message: Message, field: FieldDescriptor) -> bool:
    if field.type == FieldDescriptor.TYPE_MESSAGE or field.containing_oneof is not None:
        return message.HasField(field.name)
    return getattr(message, field.name) != field.default_value


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _map_of_messages(field: FieldDescriptor) -> bool:
    return field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE


def _names(oneof) -> str:
    return ", ".join(f.name for f in oneof.fields)


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
