"""Generic checks of any spec against limits Envoy enforces on what we translate it into.

They walk the typed spec through its descriptor, so that a field added to protos/ later is
covered without anyone remembering to: every google.protobuf.Duration (Envoy refuses
negative ones and those that overflow int64 nanoseconds) and every string (Envoy refuses
CR, LF and NUL in host names, header names and values). Plus the checks that need several
resources to know what an endpoint address becomes in Envoy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from protos import service_entry_pb2
from translators import model
from translators.naming import is_ip, selects
from xds_server.config.checks_common import DURATION_LIMIT_SECONDS, Finding, enabled
from xds_server.config.yaml_lines import Path

_DURATION = "google.protobuf.Duration"
_OPAQUE = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
# Free text that may hold line breaks: it never becomes a header, a host or a name.
FREE_TEXT_FIELDS = frozenset({"meshapi.networking.HTTPBody.string"})
_CONTROL = re.compile(r"[\r\n\x00]")
_CONTROL_NAMES = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\0": "a NUL"}
UNIX_PREFIX = "unix://"
_STATIC = service_entry_pb2.ServiceEntry.Resolution.Value("STATIC")
_DNS_ROUND_ROBIN = service_entry_pb2.ServiceEntry.Resolution.Value("DNS_ROUND_ROBIN")


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def check_fields(spec: Message, root: Path) -> list[Finding]:
    """check_durations then check_control_chars, from one walk over the spec (each walk
    costs as much as the rest of a small file's checks)."""
    durations: list[Finding] = []
    texts: list[Finding] = []
    _walk(
        spec,
        root,
        durations if enabled("duration-range") else None,
        texts if enabled("control-chars") else None,
    )
    return durations + texts


def _walk(message: Message, path: Path, durations: list | None, texts: list | None) -> None:
    for fd, value in message.ListFields():
        child = (*path, fd.json_name)
        if _is_map(fd):
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            for key in sorted(value):
                where = (*child, key)
                if texts is not None:
                    _text(key_fd, key, where, texts)
                _one(value_fd, value[key], where, durations, texts)
        elif fd.is_repeated:
            for i, item in enumerate(value):
                _one(fd, item, (*child, i), durations, texts)
        else:
            _one(fd, value, child, durations, texts)


def _one(fd: FieldDescriptor, value: Any, path: Path, durations, texts) -> None:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        name = fd.message_type.full_name
        if name == _DURATION:
            if durations is not None:
                durations.extend(_duration_findings(value, path))
        elif name not in _OPAQUE:
            _walk(value, path, durations, texts)
    elif texts is not None:
        _text(fd, value, path, texts)


def _text(fd: FieldDescriptor, value: Any, path: Path, texts: list) -> None:
    if fd.type != FieldDescriptor.TYPE_STRING or fd.full_name in FREE_TEXT_FIELDS:
        return
    found = _CONTROL.search(value)
    if found:
        texts.append(
            (
                path,
                f"contains {_CONTROL_NAMES[found.group()]}: Envoy refuses CR, LF and NUL in "
                "host names and in header names and values, and no HTTP request can carry them",
            )
        )


def _duration_findings(value: Any, path: Path) -> list[Finding]:
    if value.seconds < 0 or value.nanos < 0:
        return [(path, "duration must not be negative")]
    if value.seconds >= DURATION_LIMIT_SECONDS:
        return [
            (
                path,
                f"duration too long: Envoy's maximum is just under {DURATION_LIMIT_SECONDS}s "
                "(about 292 years; it counts int64 nanoseconds)",
            )
        ]
    return []


def endpoint_findings(config: model.MeshConfig) -> Iterator[tuple[model.ConfigResource, Path, str]]:
    """Cross-resource: (resource, path, message) for endpoint addresses Envoy would refuse.

    A WorkloadEntry may name a DNS host (Istio allows it for ServiceEntries that resolve
    by DNS), but one that a Service or a STATIC ServiceEntry selects becomes an EDS
    endpoint, which Envoy refuses unless it is an IP ("malformed IP address"). A
    DNS_ROUND_ROBIN ServiceEntry becomes a LOGICAL_DNS cluster: one endpoint at most."""
    if not enabled("endpoint-address") and not enabled("dns-round-robin"):
        return
    entries = config.of_kind(model.WORKLOAD_ENTRY)
    if not entries:
        return
    named = [
        we
        for we in entries
        if not is_ip(we.spec.address) and not we.spec.address.startswith(UNIX_PREFIX)
    ]
    selectors = []
    if named and enabled("endpoint-address"):
        selectors = [(res, res.spec.selector, "Service") for res in config.of_kind(model.SERVICE)]
        selectors += [
            (res, res.spec.workload_selector.labels, "STATIC ServiceEntry")
            for res in config.of_kind(model.SERVICE_ENTRY)
            if res.spec.resolution == _STATIC
        ]
    for we in named if selectors else ():
        address = we.spec.address
        users = [
            f"{kind} {res.namespace}/{res.name}"
            for res, selector, kind in selectors
            if res.namespace == we.namespace and selects(selector, we.spec.labels)
        ]
        if users:
            yield (
                we,
                ("spec", "address"),
                f"{address!r} is not an IP address, but {', '.join(users)} makes it an EDS "
                "endpoint, which Envoy refuses (malformed IP address); only a ServiceEntry "
                "with resolution DNS can use a host name",
            )
    if not enabled("dns-round-robin"):
        return
    for se in config.of_kind(model.SERVICE_ENTRY):
        if se.spec.resolution != _DNS_ROUND_ROBIN:
            continue
        selected = [
            we
            for we in entries
            if we.namespace == se.namespace
            and selects(se.spec.workload_selector.labels, we.spec.labels)
        ]
        if selected and len(se.spec.endpoints) + len(selected) > 1:
            yield (
                se,
                ("spec", "workloadSelector"),
                f"resolution DNS_ROUND_ROBIN takes one endpoint, but this one has "
                f"{len(se.spec.endpoints) + len(selected)} with the WorkloadEntries it selects "
                "(Envoy's LOGICAL_DNS cluster needs exactly one); use resolution DNS",
            )
