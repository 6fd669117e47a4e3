"""The snapshot of a set of file versions: which definition of each resource wins, and
the warnings about the ones that lose.

Two files defining one kind/namespace/name: the most recently modified file's definition
wins, as the last `kubectl apply` would (ties: the path that sorts first). A decision
usually changes one file among thousands, so an assembly is derived from the previous
one by what the changed files held; it gives exactly what assembling everything again
would (tests/test_config_store.py checks both ways against each other).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from protos import mesh_config_pb2
from translators import model
from xds_server.config.loader import ConfigIssue, ParsedFile

Key = tuple[str, str, str]
# Beyond this share of files changed, assembling everything again is as quick.
_INCREMENTAL_SHARE = 8


@dataclass(frozen=True)
class Assembly:
    """A snapshot with what deriving the next one needs."""

    files: Mapping[str, ParsedFile]
    snapshot: model.MeshConfig
    # file names defining each key (sorted), and the winning definition
    definers: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    winners: dict[Key, model.ConfigResource] = field(default_factory=dict)
    # the keys of snapshot.resources, in the same (sorted) order
    keys: list[Key] = field(default_factory=list)
    shadowed: dict[Key, list[ConfigIssue]] = field(default_factory=dict)
    mesh_issues: list[ConfigIssue] = field(default_factory=list)

    @property
    def duplicates(self) -> list[ConfigIssue]:
        """A warning for every definition that loses, in file and line order."""
        found = [issue for issues in self.shadowed.values() for issue in issues]
        return sorted([*found, *self.mesh_issues], key=_issue_order)


def assemble(files: Mapping[str, ParsedFile]) -> Assembly:
    """The assembly of these file versions, from nothing."""
    definers: dict[Key, list[str]] = {}
    for name in sorted(files):
        for res in files[name].resources:
            definers.setdefault(res.key, []).append(name)
    frozen = {key: tuple(names) for key, names in definers.items()}
    winners: dict[Key, model.ConfigResource] = {}
    shadowed: dict[Key, list[ConfigIssue]] = {}
    for key, names in frozen.items():
        winners[key], issues = _resolve(key, names, files)
        if issues:
            shadowed[key] = issues
    keys = sorted(winners)
    mesh, mesh_issues = _mesh(files, [n for n in files if files[n].mesh is not None])
    snapshot = model.MeshConfig(resources=tuple(winners[k] for k in keys), mesh=mesh)
    return Assembly(files, snapshot, frozen, winners, keys, shadowed, mesh_issues)


def assemble_after(
    previous: Assembly | None,
    files: Mapping[str, ParsedFile],
    hint: Iterable[str] | None = None,
) -> Assembly:
    """The assembly of `files`, derived from `previous` when few files differ. `hint`:
    the only names whose version can differ from `previous`'s (None: any)."""
    if previous is None:
        return assemble(files)
    before = previous.files
    names = files.keys() | before.keys() if hint is None else hint
    changed = [n for n in names if files.get(n) is not before.get(n)]
    if not changed:
        return previous if files is before else replace(previous, files=files)
    if len(changed) * _INCREMENTAL_SHARE > max(len(files), 64):
        return assemble(files)
    touched = {
        res.key
        for name in changed
        for parsed in (before.get(name), files.get(name))
        if parsed is not None
        for res in parsed.resources
    }
    if len(touched) * _INCREMENTAL_SHARE > max(len(previous.keys), 64):
        return assemble(files)
    definers = dict(previous.definers)
    for name in changed:
        old, new = before.get(name), files.get(name)
        for res in old.resources if old is not None else ():
            definers[res.key] = tuple(n for n in definers[res.key] if n != name)
        for res in new.resources if new is not None else ():
            definers[res.key] = tuple(sorted({*definers.get(res.key, ()), name}))
    winners = dict(previous.winners)
    shadowed = dict(previous.shadowed)
    keys = list(previous.keys)
    resources = list(previous.snapshot.resources)
    removed: list[model.ConfigResource] = []
    added: list[model.ConfigResource] = []
    for key in sorted(touched):
        names = definers.get(key, ())
        old_winner = winners.get(key)
        shadowed.pop(key, None)
        if not names:
            definers.pop(key, None)
            del winners[key]
            at = bisect_left(keys, key)
            del keys[at], resources[at]
            removed.append(old_winner)
            continue
        winner, issues = _resolve(key, names, files)
        if issues:
            shadowed[key] = issues
        if winner is old_winner:
            continue
        winners[key] = winner
        at = bisect_left(keys, key)
        if old_winner is None:
            keys.insert(at, key)
            resources.insert(at, winner)
        else:
            resources[at] = winner
            removed.append(old_winner)
        added.append(winner)
    versions = [before.get(n) for n in changed] + [files.get(n) for n in changed]
    if any(parsed is not None and parsed.mesh is not None for parsed in versions):
        mesh, mesh_issues = _mesh(files, [n for n in files if files[n].mesh is not None])
    else:
        mesh, mesh_issues = previous.snapshot.mesh, previous.mesh_issues
    if mesh is not previous.snapshot.mesh and mesh != previous.snapshot.mesh:
        snapshot = model.MeshConfig(resources=tuple(resources), mesh=mesh)
    else:
        snapshot = previous.snapshot.evolve(
            tuple(resources), removed, added, previous.snapshot.mesh
        )
    return Assembly(files, snapshot, definers, winners, keys, shadowed, mesh_issues)


def _resolve(
    key: Key, names: tuple[str, ...], files: Mapping[str, ParsedFile]
) -> tuple[model.ConfigResource, list[ConfigIssue]]:
    """The winning definition of `key` among the files (sorted) defining it, and a
    warning for each other definition."""
    definitions = [(name, _defined(files[name], key)) for name in names]
    owner, winner = definitions[0]
    for name, res in definitions[1:]:
        if files[name].mtime_ns > files[owner].mtime_ns:
            owner, winner = name, res
    issues = [
        ConfigIssue(
            name,
            res.origin.line,
            f"also defined at {winner.origin}, which wins (the most recently "
            "modified file does); this definition is ignored",
            res.ref,
            severity="warning",
        )
        for name, res in definitions
        if name != owner
    ]
    return winner, issues


def _defined(parsed: ParsedFile, key: Key) -> model.ConfigResource:
    # A valid file defines a key once (parse_file refuses duplicates within a file).
    return parsed.by_key[key]


def _mesh(
    files: Mapping[str, ParsedFile], names: list[str]
) -> tuple[mesh_config_pb2.MeshConfig, list[ConfigIssue]]:
    """The mesh config in force (the most recently modified file's) and a warning for
    each other file that defines one."""
    owner: ParsedFile | None = None
    for name in sorted(names):
        if owner is None or files[name].mtime_ns > owner.mtime_ns:
            owner = files[name]
    if owner is None:
        return model.with_mesh_defaults(mesh_config_pb2.MeshConfig()), []
    issues = [
        ConfigIssue(
            name,
            1,
            f"mesh config also defined in {owner.path}, which wins (the most "
            "recently modified file does); this one is ignored",
            severity="warning",
        )
        for name in sorted(names)
        if files[name] is not owner
    ]
    return model.with_mesh_defaults(owner.mesh), issues


def _issue_order(issue: ConfigIssue) -> tuple:
    return (issue.file, issue.line, issue.resource, issue.message)
