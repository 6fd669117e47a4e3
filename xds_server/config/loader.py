"""Parse one file's text into typed resources and issues (pure; never raises).

Every problem, including input no one would write on purpose (a scalar where a mapping
belongs, a timestamp where a string belongs, a document too deep or too aliased), becomes
a ConfigIssue with file, line, resource and field. Which version of each file is in force
is the store's business (store.py).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from google.protobuf.message import Message

from protos import (
    authorization_policy_pb2,
    destination_rule_pb2,
    envoy_filter_pb2,
    gateway_pb2,
    mesh_config_pb2,
    meta_pb2,
    peer_authentication_pb2,
    request_authentication_pb2,
    secret_pb2,
    service_entry_pb2,
    service_pb2,
    service_profile_pb2,
    sidecar_pb2,
    smi_pb2,
    telemetry_pb2,
    virtual_service_pb2,
    workload_entry_pb2,
)
from translators import model
from xds_server.config import validation
from xds_server.config.schema import SchemaError, to_message
from xds_server.config.yaml_lines import Path, YamlDocument, YamlSyntaxError, read_documents
from xds_server.text import safe_text

ISTIO_NETWORKING = "networking.istio.io"
ISTIO_SECURITY = "security.istio.io"
ISTIO_TELEMETRY = "telemetry.istio.io"
SMI_SPLIT = "split.smi-spec.io"
LINKERD = "linkerd.io"
# (API group, kind) -> (our kind, spec message type)
KINDS: dict[tuple[str, str], tuple[str, type[Message]]] = {
    (ISTIO_NETWORKING, "VirtualService"): (
        model.VIRTUAL_SERVICE,
        virtual_service_pb2.VirtualService,
    ),
    (ISTIO_NETWORKING, "DestinationRule"): (
        model.DESTINATION_RULE,
        destination_rule_pb2.DestinationRule,
    ),
    (ISTIO_NETWORKING, "ServiceEntry"): (model.SERVICE_ENTRY, service_entry_pb2.ServiceEntry),
    (ISTIO_NETWORKING, "WorkloadEntry"): (model.WORKLOAD_ENTRY, workload_entry_pb2.WorkloadEntry),
    (ISTIO_NETWORKING, "Gateway"): (model.GATEWAY, gateway_pb2.Gateway),
    (ISTIO_NETWORKING, "Sidecar"): (model.SIDECAR, sidecar_pb2.Sidecar),
    (ISTIO_NETWORKING, "EnvoyFilter"): (model.ENVOY_FILTER, envoy_filter_pb2.EnvoyFilter),
    ("", "Service"): (model.SERVICE, service_pb2.ServiceSpec),
    ("", "Secret"): (model.SECRET, secret_pb2.Secret),
    (SMI_SPLIT, "TrafficSplit"): (model.TRAFFIC_SPLIT, smi_pb2.TrafficSplit),
    (LINKERD, "ServiceProfile"): (model.SERVICE_PROFILE, service_profile_pb2.ServiceProfile),
    (ISTIO_SECURITY, "AuthorizationPolicy"): (
        model.AUTHORIZATION_POLICY,
        authorization_policy_pb2.AuthorizationPolicy,
    ),
    (ISTIO_SECURITY, "PeerAuthentication"): (
        model.PEER_AUTHENTICATION,
        peer_authentication_pb2.PeerAuthentication,
    ),
    (ISTIO_SECURITY, "RequestAuthentication"): (
        model.REQUEST_AUTHENTICATION,
        request_authentication_pb2.RequestAuthentication,
    ),
    (ISTIO_TELEMETRY, "Telemetry"): (model.TELEMETRY, telemetry_pb2.Telemetry),
}
# Versions whose fields match our protos, per API group.
VERSIONS = {
    ISTIO_NETWORKING: {"v1alpha3", "v1beta1", "v1"},
    SMI_SPLIT: {"v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"},
    LINKERD: {"v1alpha2"},
    ISTIO_SECURITY: {"v1beta1", "v1"},
    ISTIO_TELEMETRY: {"v1alpha1", "v1"},
}
# Istio reads mesh config from this ConfigMap (key "mesh").
MESH_CONFIGMAP = ("istio-system", "istio")
# Kubernetes object names (DNS-1123 subdomain) and namespaces (DNS-1123 label).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

log = logging.getLogger(__name__)
MAX_ISSUES = 100  # per file; the rest are counted


@dataclass(frozen=True)
class ConfigIssue:
    """An error or warning about the configuration, located as precisely as known."""

    file: str
    line: int
    message: str
    resource: str = ""
    field: str = ""
    severity: str = "error"

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}: {self.severity}"]
        if self.resource:
            parts.append(self.resource)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "severity": self.severity,
            "resource": self.resource,
            "field": self.field,
            "message": self.message,
        }


@dataclass
class ParsedFile:
    """What one version of one file holds."""

    path: str
    digest: str
    resources: list[model.ConfigResource] = field(default_factory=list)
    mesh: mesh_config_pb2.MeshConfig | None = None
    issues: list[ConfigIssue] = field(default_factory=list)
    documents: dict[tuple[str, str, str], YamlDocument] = field(default_factory=dict)
    mtime_ns: int = 0
    # The text is not YAML at all (or could not be read): perhaps a write in progress.
    unparsable: bool = False
    # No document with any content: perhaps truncated by a write in progress.
    blank: bool = True

    @property
    def ok(self) -> bool:
        return not any(issue.severity == "error" for issue in self.issues)

    @property
    def has_content(self) -> bool:
        return bool(self.resources) or self.mesh is not None

    @cached_property
    def by_key(self) -> dict[tuple[str, str, str], model.ConfigResource]:
        """Each resource by kind/namespace/name (the last one, were a key defined twice)."""
        return {res.key: res for res in self.resources}


def format_path(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _group_and_version(api_version: str) -> tuple[str, str]:
    if "/" in api_version:
        group, version = api_version.rsplit("/", 1)
        return group, version
    return "", api_version


def _parse_document(path: str, doc: YamlDocument, out: ParsedFile) -> None:
    value = doc.value
    if value is None:
        return

    def issue(message: str, at: Path = (), resource: str = "", severity: str = "error") -> None:
        out.issues.append(
            ConfigIssue(path, doc.line_of(at), message, resource, format_path(at), severity)
        )

    if not isinstance(value, dict):
        issue(f"expected a resource mapping, got {type(value).__name__}")
        return
    api_version, kind = value.get("apiVersion"), value.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        issue("required: apiVersion and kind", ("apiVersion",) if not api_version else ("kind",))
        return
    meta, problem = _metadata(value.get("metadata"))
    if meta is None:
        issue(problem[1], ("metadata", *problem[0]))
        return
    namespace = meta.namespace or model.DEFAULT_NAMESPACE
    ref = f"{kind} {namespace}/{meta.name or '<unnamed>'}"
    if not meta.name:
        issue("required: metadata.name", ("metadata",), ref)
        return
    if not _NAME.fullmatch(meta.name):
        issue(
            "must be a Kubernetes name: lower case letters, digits, '-' and '.', "
            "at most 253 characters, starting and ending with a letter or digit",
            ("metadata", "name"),
            f"{kind} {namespace}/<invalid name>",
        )
        return
    if not _NAMESPACE.fullmatch(namespace):
        issue(
            "must be a Kubernetes namespace: lower case letters, digits and '-', "
            "at most 63 characters, starting and ending with a letter or digit",
            ("metadata", "namespace"),
            f"{kind} <invalid namespace>/{meta.name}",
        )
        return
    group, version = _group_and_version(api_version)

    if (group, kind) == ("", "ConfigMap"):
        if (namespace, meta.name) != MESH_CONFIGMAP:
            issue(
                "ConfigMap is not the mesh config (istio-system/istio); skipped",
                resource=ref,
                severity="warning",
            )
            return
        _parse_mesh(value, doc, ref, out, issue)
        return

    known = KINDS.get((group, kind))
    if known is None:
        issue(
            f"unknown or unsupported kind {kind} ({api_version}); skipped",
            ("kind",),
            ref,
            "warning",
        )
        return
    if group in VERSIONS and version not in VERSIONS[group]:
        issue(f"unsupported apiVersion {api_version}", ("apiVersion",), ref)
        return
    our_kind, spec_type = known
    root = validation.root_path(our_kind)
    if our_kind == model.SECRET:  # its fields sit beside metadata, not under spec
        spec_value = {k: v for k, v in value.items() if k not in _OBJECT_KEYS}
    else:
        spec_value = value.get("spec")
    if spec_value is None:
        issue("required: spec", ("spec",), ref)
        return
    try:
        spec = to_message(spec_type, spec_value)
    except SchemaError as exc:
        message, at = str(exc), (*root, *exc.path)
        if our_kind == model.SECRET:  # never a value of a Secret, not even misplaced
            message = _QUOTED.sub("a value", message)
            at = at[:2] if at[:1] in (("data",), ("stringData",)) else at[:1]
            if at[:1] not in (("type",), ("data",), ("stringData",), ("immutable",)):
                at = ()
        issue(message, at, ref)
        return
    _check(our_kind, spec, issue, ref)
    out.documents[(our_kind, namespace, meta.name)] = doc
    out.resources.append(
        model.ConfigResource(
            kind=our_kind,
            namespace=namespace,
            name=meta.name,
            spec=spec,
            origin=model.Origin(path, doc.line),
            labels=dict(meta.labels),
            created=meta.creation_timestamp,
        )
    )


_OBJECT_KEYS = ("apiVersion", "kind", "metadata")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _plain(value: Any) -> Any:
    """YAML timestamps as the strings Kubernetes keeps them as."""
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat().replace("+00:00", "Z")
    return value


def _metadata(value: Any) -> tuple[meta_pb2.ObjectMeta | None, tuple[Path, str]]:
    """ObjectMeta, or None and (path inside metadata, message)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        return None, ((), f"metadata must be a mapping, got {type(value).__name__}")
    for key in ("name", "namespace", "creationTimestamp"):
        item = value.get(key)
        if item is not None and not isinstance(_plain(item), str):
            return None, ((key,), f"{key} must be a string, got {type(item).__name__}")
    for key in ("labels", "annotations"):
        item = value.get(key)
        if item is None:
            continue
        if not isinstance(item, dict):
            return None, ((key,), f"{key} must be a mapping, got {type(item).__name__}")
        for k, v in item.items():
            if not isinstance(k, str) or not isinstance(_plain(v), str):
                return None, ((key, str(k)), f"{key} keys and values must be strings")
    try:
        meta = meta_pb2.ObjectMeta(
            name=value.get("name") or "",
            namespace=value.get("namespace") or "",
            creation_timestamp=_plain(value.get("creationTimestamp")) or "",
        )
        for key, target in (("labels", meta.labels), ("annotations", meta.annotations)):
            for k, v in (value.get(key) or {}).items():
                target[k] = _plain(v)
    except (TypeError, ValueError) as exc:  # e.g. a lone surrogate protobuf refuses
        return None, ((), f"invalid metadata: {exc}")
    return meta, ((), "")


def _check(kind: str, spec: Message, issue: Any, ref: str) -> None:
    for at, message in validation.check(kind, spec):
        issue(message, at, ref)
    for at, message in validation.warnings(kind, spec):
        issue(message, at, ref, "warning")


def _parse_mesh(value: dict, doc: YamlDocument, ref: str, out: ParsedFile, issue: Any) -> None:
    data = value.get("data")
    if data is None:
        return
    if not isinstance(data, dict):
        issue(f"data must be a mapping, got {type(data).__name__}", ("data",), ref)
        return
    text = data.get("mesh")
    if text is None:
        return
    if not isinstance(text, str):
        issue("data.mesh must be a YAML string", ("data", "mesh"), ref)
        return
    base_line = doc.line_of(("data", "mesh"))
    try:
        inner = next(iter(read_documents(text)), None)
        mesh = to_message(mesh_config_pb2.MeshConfig, (inner.value if inner else None) or {})
    except YamlSyntaxError as exc:
        out.issues.append(ConfigIssue(out.path, base_line + exc.line, str(exc), ref, "data.mesh"))
        return
    except SchemaError as exc:
        line = base_line + (inner.line_of(exc.path) if inner else 0)
        out.issues.append(
            ConfigIssue(out.path, line, str(exc), ref, format_path(("data", "mesh", *exc.path)))
        )
        return

    def inner_issue(message: str, at: Path, resource: str, severity: str = "error") -> None:
        """A finding in the embedded mesh YAML, at its own line."""
        line = base_line
        if inner is not None and at[:2] == ("data", "mesh") and len(at) > 2:
            line += inner.line_of(at[2:])
        out.issues.append(ConfigIssue(out.path, line, message, resource, format_path(at), severity))

    _check(model.MESH_CONFIG, mesh, inner_issue, ref)
    out.mesh = mesh


def parse_file(path: str, text: str, mtime_ns: int = 0, digest: str = "") -> ParsedFile:
    """Parse one file's text into resources and issues (pure; never raises). `digest`:
    the text's sha256, when the caller has it already."""
    digest = digest or hashlib.sha256(text.encode()).hexdigest()
    out = ParsedFile(path=path, digest=digest, mtime_ns=mtime_ns)
    try:
        for doc in read_documents(text):
            if doc.value is not None:
                out.blank = False
            try:
                _parse_document(path, doc, out)
            except Exception as exc:  # a loader bug must cost one document, not the server
                log.exception("internal error loading %s:%d", safe_text(path), doc.line)
                out.issues.append(ConfigIssue(path, doc.line, _internal(exc)))
            # Only the line map is kept: the raw YAML tree would double what every
            # garbage collection has to walk, for as long as this version is in force.
            doc.value = None
    except YamlSyntaxError as exc:
        out.unparsable = True
        out.issues.append(ConfigIssue(path, exc.line, str(exc)))
    except Exception as exc:
        log.exception("internal error loading %s", safe_text(path))
        out.unparsable = True
        out.issues.append(ConfigIssue(path, 1, _internal(exc)))
    if len(out.issues) > MAX_ISSUES:
        hidden = len(out.issues) - MAX_ISSUES
        out.issues[MAX_ISSUES:] = [
            ConfigIssue(path, out.issues[MAX_ISSUES].line, f"... and {hidden} more issues")
        ]
    if out.ok:
        seen: dict[tuple[str, str, str], model.ConfigResource] = {}
        for res in out.resources:
            if res.key in seen:
                out.issues.append(
                    ConfigIssue(
                        path,
                        res.origin.line,
                        f"duplicate of the resource at line {seen[res.key].origin.line}",
                        res.ref,
                    )
                )
            seen[res.key] = res
    return out


def unreadable_file(path: str, message: str, line: int = 1) -> ParsedFile:
    """A file that could not be read as text: it counts as unparsable."""
    return ParsedFile(
        path=path,
        digest="",
        issues=[ConfigIssue(path, line, message)],
        unparsable=True,
    )


def _internal(exc: Exception) -> str:
    return f"could not be loaded ({type(exc).__name__}: {exc}); please report this"
