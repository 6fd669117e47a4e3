"""Protobuf wire format, for joining a message from cached parts and a few fresh fields.

A message serialized deterministically has its fields in field-number order. Cut into
its top-level fields (`segments`), it can take more fields where their numbers say and
give exactly the bytes the whole message would serialize to.
"""

from __future__ import annotations

Segment = tuple[int, bytes]  # (field number, the field's bytes: tag, length and value)


def varint(value: int) -> bytes:
    """A non-negative integer as a protobuf varint."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def segments(data: bytes) -> list[Segment]:
    """The top-level fields of a serialized message, in the order they were written."""
    out: list[Segment] = []
    at = 0
    while at < len(data):
        start = at
        tag, at = _read_varint(data, at)
        kind = tag & 7
        if kind == 0:
            _, at = _read_varint(data, at)
        elif kind == 1:
            at += 8
        elif kind == 2:
            size, at = _read_varint(data, at)
            at += size
        elif kind == 5:
            at += 4
        else:  # groups (3, 4) are not in any message we write
            raise ValueError(f"wire type {kind} at byte {start}")
        out.append((tag >> 3, data[start:at]))
    return out


def field_value(field: bytes) -> bytes:
    """The value of one length-delimited field whose tag is one byte (field numbers 1 to
    15): what its tag and length wrap."""
    length, start = _read_varint(field, 1)
    return field[start : start + length]
