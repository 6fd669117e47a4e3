"""Turn a directory of Istio-style YAML files into a MeshConfig, keeping the last good one.

Parsing is per file: a file whose every document is valid replaces that file's previous
version; a file with any error keeps its previous valid version in force and reports the
error with file, line, resource and field. Two files defining the same kind/namespace/name
are an error naming both; the file that changed last loses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from protos import (
    destination_rule_pb2,
    gateway_pb2,
    mesh_config_pb2,
    meta_pb2,
    service_entry_pb2,
    service_pb2,
    service_profile_pb2,
    sidecar_pb2,
    smi_pb2,
    virtual_service_pb2,
    workload_entry_pb2,
)
from translators import model
from xds_server.config import validation
from xds_server.config.cross_checks import cross_check
from xds_server.config.schema import SchemaError, to_message
from xds_server.config.yaml_lines import Path, YamlDocument, YamlSyntaxError, read_documents

ISTIO_NETWORKING = "networking.istio.io"
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
    ("", "Service"): (model.SERVICE, service_pb2.ServiceSpec),
    (SMI_SPLIT, "TrafficSplit"): (model.TRAFFIC_SPLIT, smi_pb2.TrafficSplit),
    (LINKERD, "ServiceProfile"): (model.SERVICE_PROFILE, service_profile_pb2.ServiceProfile),
}
# Versions whose fields match our protos, per API group.
VERSIONS = {
    ISTIO_NETWORKING: {"v1alpha3", "v1beta1", "v1"},
    SMI_SPLIT: {"v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"},
    LINKERD: {"v1alpha2"},
}
# Istio reads mesh config from this ConfigMap (key "mesh").
MESH_CONFIGMAP = ("istio-system", "istio")
YAML_SUFFIXES = (".yaml", ".yml")


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

    @property
    def ok(self) -> bool:
        return not any(issue.severity == "error" for issue in self.issues)


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
    try:
        meta = json_format.ParseDict(
            value.get("metadata") or {}, meta_pb2.ObjectMeta(), ignore_unknown_fields=True
        )
    except json_format.ParseError as exc:
        issue(f"invalid metadata: {exc}", ("metadata",))
        return
    namespace = meta.namespace or model.DEFAULT_NAMESPACE
    ref = f"{kind} {namespace}/{meta.name or '<unnamed>'}"
    if not meta.name:
        issue("required: metadata.name", ("metadata",), ref)
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
    spec_value = value.get("spec")
    if spec_value is None:
        issue("required: spec", ("spec",), ref)
        return
    try:
        spec = to_message(spec_type, spec_value)
    except SchemaError as exc:
        issue(str(exc), ("spec", *exc.path), ref)
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


def _check(kind: str, spec: Message, issue: Any, ref: str) -> None:
    for at, message in validation.check(kind, spec):
        issue(message, at, ref)
    for at, message in validation.warnings(kind, spec):
        issue(message, at, ref, "warning")


def _parse_mesh(value: dict, doc: YamlDocument, ref: str, out: ParsedFile, issue: Any) -> None:
    text = (value.get("data") or {}).get("mesh")
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
    _check(model.MESH_CONFIG, mesh, issue, ref)
    out.mesh = mesh


def parse_file(path: str, text: str) -> ParsedFile:
    """Parse one file's text into resources and issues (pure)."""
    out = ParsedFile(path=path, digest=hashlib.sha256(text.encode()).hexdigest())
    try:
        for doc in read_documents(text):
            _parse_document(path, doc, out)
    except YamlSyntaxError as exc:
        out.issues.append(ConfigIssue(path, exc.line, str(exc)))
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


def yaml_files(directory: FsPath) -> list[FsPath]:
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.rglob("*")
        if p.suffix in YAML_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


class ConfigStore:
    """The accepted version of every file, and the issues of the latest attempt at each."""

    def __init__(self, directory: FsPath) -> None:
        self.directory = directory
        self._root = directory.resolve()
        self.accepted: dict[str, ParsedFile] = {}
        self.issues: dict[str, list[ConfigIssue]] = {}
        self.digests: dict[str, str] = {}  # latest seen content of each file
        self.snapshot = model.MeshConfig()
        self.reference_issues: list[ConfigIssue] = []

    def display_name(self, path: FsPath) -> str:
        """The file as the user named its directory: `mesh/reviews.yaml`."""
        try:
            return str(self.directory / path.resolve().relative_to(self._root))
        except ValueError:
            return str(path)

    def load_all(self) -> model.MeshConfig:
        return self.update(yaml_files(self.directory), rescan=True)

    def update(self, paths: Iterable[FsPath], rescan: bool = False) -> model.MeshConfig:
        """Re-read `paths` (created, modified or deleted); returns the new snapshot."""
        changed = {self.display_name(p): p for p in map(FsPath, paths) if p.suffix in YAML_SUFFIXES}
        if rescan:
            present = {self.display_name(p) for p in yaml_files(self.directory)}
            for gone in set(self.accepted) - present:
                changed.setdefault(gone, FsPath(gone))
        for name in sorted(changed):
            self._update_file(name, changed[name])
        self.snapshot = self._assemble()
        self.reference_issues = self._cross_check(self.snapshot)
        return self.snapshot

    def _update_file(self, name: str, path: FsPath) -> None:
        previous = self.accepted.pop(name, None)
        try:
            text = path.read_text()
        except (FileNotFoundError, IsADirectoryError):
            self.issues.pop(name, None)
            self.digests.pop(name, None)
            return
        except (OSError, UnicodeDecodeError) as exc:
            self.issues[name] = [ConfigIssue(name, 1, f"cannot read file: {exc}")]
            if previous:
                self.accepted[name] = previous
            return
        parsed = parse_file(name, text)
        self.digests[name] = parsed.digest
        conflicts = self._conflicts(parsed) if parsed.ok else []
        self.issues[name] = parsed.issues + conflicts
        if parsed.ok and not conflicts:
            self.accepted[name] = parsed
        elif previous is not None:
            self.accepted[name] = previous
            self.issues[name].append(
                ConfigIssue(
                    name,
                    1,
                    "the previous valid version of this file stays in force",
                    severity="warning",
                )
            )

    def _conflicts(self, parsed: ParsedFile) -> list[ConfigIssue]:
        taken = {res.key: res for other in self.accepted.values() for res in other.resources}
        issues = []
        for res in parsed.resources:
            other = taken.get(res.key)
            if other is not None:
                issues.append(
                    ConfigIssue(
                        parsed.path, res.origin.line, f"already defined at {other.origin}", res.ref
                    )
                )
        if parsed.mesh is not None:
            for other in self.accepted.values():
                if other.mesh is not None:
                    issues.append(
                        ConfigIssue(parsed.path, 1, f"mesh config already defined in {other.path}")
                    )
        return issues

    def _assemble(self) -> model.MeshConfig:
        resources: list[model.ConfigResource] = []
        mesh = mesh_config_pb2.MeshConfig()
        for name in sorted(self.accepted):
            parsed = self.accepted[name]
            resources.extend(parsed.resources)
            if parsed.mesh is not None:
                mesh = parsed.mesh
        return model.MeshConfig(resources=tuple(resources), mesh=model.with_mesh_defaults(mesh))

    def _cross_check(self, snapshot: model.MeshConfig) -> list[ConfigIssue]:
        documents = {
            key: doc for parsed in self.accepted.values() for key, doc in parsed.documents.items()
        }
        issues = []
        for finding in cross_check(snapshot):
            res = finding.resource
            doc = documents.get(res.key)
            line = doc.line_of(finding.path) if doc else res.origin.line
            issues.append(
                ConfigIssue(
                    res.origin.file,
                    line,
                    finding.message,
                    res.ref,
                    format_path(finding.path),
                    finding.severity,
                )
            )
        return issues

    def all_issues(self) -> list[ConfigIssue]:
        issues = [issue for name in sorted(self.issues) for issue in self.issues[name]]
        return issues + self.reference_issues
