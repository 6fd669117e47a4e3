"""The configuration in force: which version of each file counts, decided over the whole
directory on every change (so the answer never depends on the order of past edits).

- A file whose every document is valid replaces its previous version. A file with an
  error keeps its previous valid version in force, and the error names file:line.
- A file that turns blank or unparsable (`generate > f.yaml` truncates before it writes)
  keeps its previous version for a settle window; only then does it count.
- Two files defining one kind/namespace/name: the most recently modified file wins, as
  the last `kubectl apply` would (ties: the path that sorts first); the other definition
  is ignored with a warning naming both. Deleting the winner brings the other back.
- After the first load, a change that makes a route point at a subset no
  DestinationRule defines is held back like an error: the changed file's previous
  version stays in force until the reference resolves, so a VirtualService and its
  DestinationRule can be edited in either order without a failed request. On the first
  load there is nothing to fall back to: it is an error, and the routes apply as Istio
  would apply them (503 for that subset).
- A file version that Envoy rejected (rollback()) is held back the same way until the
  file changes again. When one rejected push changed several files, all are held and
  then retried one at a time (release_suspect()): the one Envoy rejects again is the
  culprit, and the others go through.

Reading and parsing happen in update(), which the watcher runs in a worker thread; the
result replaces `state` in one assignment, so a reader on the event loop that takes
`store.state` once sees one decision, never parts of two.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path, PurePath

from translators import model
from translators.naming import fqdn, host_matches
from xds_server.config.assembly import Assembly, assemble, assemble_after
from xds_server.config.cross_checks import (
    CrossChecks,
    CrossFinding,
    dangling_after,
    dangling_subsets,
)
from xds_server.config.files import (
    DEFAULT_MAX_BYTES,
    FileGone,
    UnreadableFile,
    config_files,
    is_config_file,
    read_config_file,
)
from xds_server.config.loader import (
    ConfigIssue,
    ParsedFile,
    format_path,
    parse_file,
    unreadable_file,
)
from xds_server.config.memory import ConfigMemory, RememberedRejection

log = logging.getLogger(__name__)
HISTORY = 32  # config versions whose files are remembered, for rolling back a NACK


@dataclass(frozen=True)
class Rejection:
    """A file version Envoy refused, and what stays in force instead."""

    digest: str  # "" when the rejected change was the file's deletion
    group: int  # files rolled back together are retried together
    fallback: ParsedFile | None
    issues: tuple[ConfigIssue, ...]
    # Rolled back with other files: maybe innocent, retried alone (release_suspect()).
    suspect: bool = False
    message: str = ""  # Envoy's


@dataclass(frozen=True)
class StoreState:
    """What the store holds after one decision; replaced whole, so a reader that takes
    `store.state` once sees one decision, never parts of two."""

    latest: dict[str, ParsedFile] = field(default_factory=dict)  # newest read of each file
    accepted: dict[str, ParsedFile] = field(default_factory=dict)  # the version in force
    issues: dict[str, list[ConfigIssue]] = field(default_factory=dict)
    reference_issues: list[ConfigIssue] = field(default_factory=list)
    snapshot: model.MeshConfig = field(default_factory=model.MeshConfig)
    settling: dict[str, float] = field(default_factory=dict)  # file -> end of its window
    loaded: bool = False
    # Dangling subset references of `snapshot`, kept so the next decision need not
    # compute them again.
    dangling: list[CrossFinding] = field(default_factory=list)
    # What this decision changed against the previous snapshot (see change_set).
    changes: list[Change] = field(default_factory=list)
    # What deriving the next decision from this one needs: the assembled snapshot, the
    # cross checks' findings, and each file's candidate version (see _decide).
    assembly: Assembly | None = None
    cross: CrossChecks = field(default_factory=CrossChecks)
    candidates: dict[str, Candidate] = field(default_factory=dict)
    # The version each file proposed and its own issues, before holds and duplicates; and
    # the files held back (see _hold_dangling).
    proposed: dict[str, ParsedFile] = field(default_factory=dict)
    proposed_issues: dict[str, tuple[ConfigIssue, ...]] = field(default_factory=dict)
    held: frozenset[str] = frozenset()

    @property
    def digests(self) -> dict[str, str]:
        """The latest content seen of every present file."""
        return {name: parsed.digest for name, parsed in self.latest.items()}

    @cached_property
    def directories(self) -> frozenset[str]:
        """Every directory that holds a present file, at any depth."""
        found: set[str] = set()
        for name in self.latest:
            parent = os.path.dirname(name)
            while parent and parent not in found:
                found.add(parent)
                parent = os.path.dirname(parent)
        return frozenset(found)

    def all_issues(self) -> list[ConfigIssue]:
        issues = [issue for name in sorted(self.issues) for issue in self.issues[name]]
        return issues + self.reference_issues


class ConfigStore:
    """The version in force of every file, the latest read of each, and their issues."""

    def __init__(
        self,
        directory: Path,
        max_file_bytes: int = DEFAULT_MAX_BYTES,
        settle_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        memory: ConfigMemory | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.memory = memory or ConfigMemory(None)
        self._root = os.path.abspath(self.directory)
        self.max_file_bytes = max_file_bytes
        self.settle_seconds = settle_seconds
        self.clock = clock
        self.state = StoreState()
        self.rejected: dict[str, Rejection] = {}
        self.history: OrderedDict[str, dict[str, ParsedFile]] = OrderedDict()
        self._groups = itertools.count(1)
        self._reference_issues: dict[tuple, tuple[model.ConfigResource, ConfigIssue]] = {}
        self._released: set[str] = set()  # suspects let go since the last decision

    # The state's parts, for readers that need one of them.
    latest = property(lambda self: self.state.latest)
    accepted = property(lambda self: self.state.accepted)
    issues = property(lambda self: self.state.issues)
    reference_issues = property(lambda self: self.state.reference_issues)
    snapshot = property(lambda self: self.state.snapshot)
    settling = property(lambda self: self.state.settling)
    loaded = property(lambda self: self.state.loaded)

    # ---- names --------------------------------------------------------------------------

    def display_name(self, path: Path | str) -> str:
        """The file as the user named its directory: `mesh/reviews.yaml`."""
        relative = os.path.relpath(os.path.abspath(path), self._root)
        if relative == ".." or relative.startswith(".." + os.sep):
            return str(path)
        return str(self.directory / relative)

    def _relative(self, path: Path | str) -> PurePath | None:
        relative = os.path.relpath(os.path.abspath(path), self._root)
        if relative == ".." or relative.startswith(".." + os.sep):
            return None
        return PurePath(relative)

    def is_config(self, path: Path | str) -> bool:
        relative = self._relative(path)
        return relative is not None and is_config_file(relative) and not self.is_state(path)

    def is_state(self, path: Path | str) -> bool:
        """Under the state directory (when it is inside the config directory): the texts
        kept there are versions of config files, not config files."""
        state = self.memory.directory
        if state is None:
            return False
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(state))
        return not (relative == ".." or relative.startswith(".." + os.sep))

    def holds_files_under(self, path: Path | str) -> bool:
        """Whether `path` is (or was) a directory of config files: a directory named
        `x.yaml` looks like a file."""
        return os.path.isdir(path) or self.display_name(path) in self.state.directories

    def is_hidden(self, path: Path | str) -> bool:
        """Outside the directory, or under a part that starts with "." (never config)."""
        relative = self._relative(path)
        return relative is None or any(part.startswith(".") for part in relative.parts)

    @property
    def digests(self) -> dict[str, str]:
        return self.state.digests

    def next_deadline(self) -> float | None:
        """When the earliest settle window ends (clock time), if any file is settling."""
        return min(self.settling.values(), default=None)

    # ---- changes ------------------------------------------------------------------------

    def load_all(self) -> model.MeshConfig:
        """Read the whole directory (the first load, or a rescan after a watcher restart).
        A first load resumes what was in force before a restart, if it was remembered,
        and takes the files on disk as an edit of it."""
        if not self.loaded:
            self._resume()
            self.memory.bulk()
        return self.update((), rescan=True)

    def _resume(self) -> None:
        remembered = self.memory.load()
        if remembered is None:
            return
        index, refused = remembered
        accepted = {}
        for name, entry in index.items():
            parsed = self._remembered(name, entry.digest, entry.mtime_ns)
            if parsed is not None:
                accepted[name] = parsed
        for name, entry in refused.items():
            fallback = None
            if entry.fallback:
                fallback = self._remembered(name, entry.fallback, 0)
                if fallback is None:
                    continue
            issue = ConfigIssue(
                name,
                1,
                f"Envoy rejected this version of the file before the restart: {entry.message}; "
                "the version Envoy last accepted stays in force until the file changes",
            )
            self.rejected[name] = Rejection(
                entry.digest, entry.group, fallback, (issue,), entry.suspect, entry.message
            )
        groups = [r.group for r in self.rejected.values()]
        self._groups = itertools.count(max(groups, default=0) + 1)
        assembly = assemble(accepted)
        snapshot = assembly.snapshot
        self.state = StoreState(
            accepted=accepted,
            snapshot=snapshot,
            loaded=True,
            dangling=list(dangling_subsets(snapshot)),
            assembly=assembly,
        )
        log.info(
            "resuming the configuration in force before the restart (%d files, version %s)",
            len(accepted),
            snapshot.version,
        )

    def _remembered(self, name: str, digest: str, mtime_ns: int) -> ParsedFile | None:
        text = self.memory.text(digest)
        if text is None:
            return None
        parsed = parse_file(name, text, mtime_ns)
        return parsed if parsed.ok and parsed.digest == digest else None

    def update(self, paths: Collection[Path | str] = (), rescan: bool = False) -> model.MeshConfig:
        """Re-read `paths` (created, modified or deleted) and decide again what is in force.
        With no paths, only decides again (a settle window ended, a rollback)."""
        changed = {self.display_name(p): Path(p) for p in paths if self.is_config(p)}
        if rescan:
            present = {
                self.display_name(p): p
                for p in config_files(self.directory)
                if not self.is_state(p)
            }
            for name in set(self.latest) - set(present):
                changed.setdefault(name, Path(name))
            for name, path in present.items():
                changed.setdefault(name, path)
        latest = dict(self.latest)
        for name in sorted(changed):
            # After a restart, the version resumed is what the file most likely still holds.
            known = latest.get(name) or self.accepted.get(name)
            parsed = self._read(name, changed[name], known)
            if parsed is None:
                latest.pop(name, None)
            else:
                latest[name] = parsed
        # With no paths (a settle window ended, a rollback, a release) every file is
        # considered; otherwise only the ones read and those with a reason of their own.
        self._decide(latest, None if rescan or not paths else changed)
        return self.snapshot

    def _read(self, name: str, path: Path, previous: ParsedFile | None) -> ParsedFile | None:
        try:
            content = read_config_file(path, self.max_file_bytes)
        except FileGone:
            return None
        except UnreadableFile as exc:
            return unreadable_file(name, str(exc), exc.line)
        digest = hashlib.sha256(content.text.encode()).hexdigest()
        self.memory.keep_text(digest, content.text)
        if previous is not None and previous.digest == digest:
            if previous.mtime_ns == content.mtime_ns:
                return previous
            return replace(previous, mtime_ns=content.mtime_ns)
        return parse_file(name, content.text, content.mtime_ns, digest)

    def rollback(self, good_version: str, bad_version: str, message: str) -> list[str]:
        """Envoy rejected what `bad_version` produced: hold back every file that differs
        from `good_version` (the last configuration Envoy accepted) and is still as it was
        then. Returns the files rolled back; call update() to apply."""
        good, bad = self.history.get(good_version), self.history.get(bad_version)
        if good is None or bad is None:
            return []
        changed = [
            name
            for name in sorted(set(good) | set(bad))
            if _digest(good.get(name)) != _digest(bad.get(name))
        ]
        known = [
            n
            for n in changed
            if n in self.rejected and self.rejected[n].digest == _digest(bad.get(n))
        ]
        if known:
            return []  # explained by a version already refused (another proxy's NACK, or
            # an earlier push that carried it): the other files are not to blame for it
        group = next(self._groups)
        rolled: dict[str, Rejection] = {}
        for name in changed:
            before, after = good.get(name), bad.get(name)
            digest = _digest(after)
            if _digest(self.accepted.get(name)) != digest:
                continue  # another version is in force since: it gets its own chance
            rolled[name] = Rejection(digest, group, before, (), suspect=False, message=message)
        suspect = len(rolled) > 1
        for name, rejection in rolled.items():
            before, after = good.get(name), bad.get(name)
            issues = tuple(_rejection_issues(name, before, after, message, len(rolled) - 1))
            self.rejected[name] = replace(rejection, issues=issues, suspect=suspect)
        return list(rolled)

    def release_suspect(self) -> str | None:
        """Retry one file that was rolled back together with others; call update()."""
        for name in sorted(self.rejected):
            if self.rejected[name].suspect:
                del self.rejected[name]
                self._released.add(name)  # the next decision looks at it, whatever it reads
                return name
        return None

    def has_suspects(self) -> bool:
        return any(r.suspect for r in self.rejected.values())

    # ---- deciding -----------------------------------------------------------------------

    def _decide(self, latest: dict[str, ParsedFile], read: Iterable[str] | None = None) -> None:
        """Decide what is in force. `read`: the files read since the last decision (None:
        consider every file, as a first load, a rescan or a rollback must)."""
        first = not self.loaded
        now = self.clock()
        rejected = self._current_rejections(latest)
        trial: dict[str, ParsedFile] = {}
        issues: dict[str, list[ConfigIssue]] = {}
        settling: dict[str, float] = {}
        known, accepted, open_windows = self.state.candidates, self.accepted, self.settling
        deleted = [n for n, r in rejected.items() if not r.digest and n not in latest]
        dirty: set[str] | None = None
        if first or read is None:
            candidates: dict[str, Candidate] = {}
            names: Iterable[str] = [*latest, *deleted]
        else:
            # Only files read, rejected, settling or held back can get another answer: every
            # other one keeps its proposal (its version is the one in force, see Candidate).
            dirty = {*read, *self.rejected, *rejected, *open_windows, *self.state.held}
            dirty |= self._released
            candidates = dict(known)
            trial.update(self.state.proposed)
            issues.update({n: list(found) for n, found in self.state.proposed_issues.items()})
            for name in dirty:
                candidates.pop(name, None)
                trial.pop(name, None)
                issues.pop(name, None)
            names = [n for n in dirty if n in latest or n in deleted]
        for name in names:
            parsed = latest.get(name)
            before = known.get(name)
            if (
                not first
                and before is not None
                and before.parsed is parsed
                and before.previous is accepted.get(name)
                and name not in open_windows
            ):
                # Same version, same fallback, no window open: the same answer.
                candidate, found = before.version, list(before.issues)
                candidates[name] = before
            else:
                candidate, found = self._candidate(name, parsed, first, now, settling)
                candidates[name] = Candidate(parsed, accepted.get(name), candidate, tuple(found))
            rejection = rejected.get(name)
            if rejection is not None and _digest(candidate) == rejection.digest:
                # The version Envoy refused would come back (the file was not changed, or
                # was changed into something invalid): the one it accepted stays.
                candidate, found = rejection.fallback, [*found, *rejection.issues]
            if candidate is not None:
                trial[name] = candidate
            if found:
                issues[name] = found
        proposed, proposed_issues = dict(trial), {n: tuple(found) for n, found in issues.items()}
        if first:
            assembly = assemble(trial)
            dangling = list(dangling_subsets(assembly.snapshot))
            holds: dict[str, list[ConfigIssue]] = {}
        else:
            holds, assembly, dangling = self._hold_dangling(trial, dirty)
            for name, held in holds.items():
                issues.setdefault(name, []).extend(held)
        snapshot = assembly.snapshot
        for issue in assembly.duplicates:
            issues.setdefault(issue.file, []).append(issue)
        changes = change_set(self.snapshot, snapshot)
        cross = self.state.cross.after(
            snapshot, None if first else _replaced(self.snapshot, snapshot)
        )
        references = self._references([*dangling, *cross.findings], trial)

        self.rejected = rejected
        self._released = set()
        self.state = StoreState(
            changes=changes,
            latest=latest,
            accepted=trial,
            issues=issues,
            reference_issues=references,
            snapshot=snapshot,
            settling=settling,
            loaded=True,
            dangling=dangling,
            assembly=assembly,
            cross=cross,
            candidates=candidates,
            proposed=proposed,
            proposed_issues=proposed_issues,
            held=frozenset(holds),
        )
        self.history[snapshot.version] = dict(trial)
        self.history.move_to_end(snapshot.version)
        while len(self.history) > HISTORY:
            self.history.popitem(last=False)
        if self.memory.directory is not None:
            self.memory.save(
                trial,  # a ParsedFile has what a Remembered entry holds
                {
                    n: RememberedRejection(
                        r.digest, _digest(r.fallback) or None, r.group, r.suspect, r.message
                    )
                    for n, r in rejected.items()
                },
                recent=lambda: {p.digest for v in self.history.values() for p in v.values()},
                changed=dirty,
            )

    def _references(
        self, findings: list[CrossFinding], files: Mapping[str, ParsedFile]
    ) -> list[ConfigIssue]:
        """The issue of each finding; a finding about a resource that did not change
        reads the line map once, not at every decision."""
        known, kept = self._reference_issues, {}
        out = []
        for finding in findings:
            key = (id(finding.resource), finding.path, finding.message, finding.severity)
            found = known.get(key)
            if found is None or found[0] is not finding.resource:
                found = (finding.resource, _issue(finding, files))
            kept[key] = found
            out.append(found[1])
        self._reference_issues = kept
        return out

    def _candidate(
        self,
        name: str,
        parsed: ParsedFile | None,
        first: bool,
        now: float,
        settling: dict[str, float],
    ) -> tuple[ParsedFile | None, list[ConfigIssue]]:
        """The version of a file that would be in force, and its issues: the latest if
        valid; the previous one while a blank or unparsable file settles, or when the
        latest has errors."""
        previous = self.accepted.get(name)
        if parsed is None:
            return None, []
        settles = not first and self.settle_seconds > 0 and _transient(parsed)
        if settles and previous is not None and previous.has_content:
            deadline = self.settling.get(name, now + self.settle_seconds)
            if now < deadline:
                settling[name] = deadline
                what = "empty" if parsed.blank and parsed.ok else "not readable as YAML"
                return previous, [
                    ConfigIssue(
                        name,
                        1,
                        f"the file is {what}; its previous version stays in force for "
                        f"{self.settle_seconds:g}s in case it is being written",
                        severity="warning",
                    )
                ]
        if parsed.ok:
            return parsed, list(parsed.issues)
        if previous is None:
            return None, list(parsed.issues)
        kept = ConfigIssue(
            name, 1, "the previous valid version of this file stays in force", severity="warning"
        )
        return previous, [*parsed.issues, kept]

    def _current_rejections(self, latest: Mapping[str, ParsedFile]) -> dict[str, Rejection]:
        """Rejections still standing. A group ends when one of its files moves on to a new
        valid version (or goes away); an invalid edit does not end it."""
        ended = {r.group for name, r in self.rejected.items() if _moved_on(r, latest.get(name))}
        return {n: r for n, r in self.rejected.items() if r.group not in ended}

    def _hold_dangling(
        self, trial: dict[str, ParsedFile], dirty: Iterable[str] | None
    ) -> tuple[dict[str, list[ConfigIssue]], Assembly, list[CrossFinding]]:
        """Hold back changed files (in `trial`, in place) until no subset reference
        dangles that did not already dangle in the configuration in force. Returns the
        holds, and the last trial's assembly and dangling references. `dirty`: the only
        files that can differ from the configuration in force (None: any)."""
        before = {_reference_key(f) for f in self.state.dangling}
        accepted = self.accepted
        names = trial.keys() | accepted.keys() if dirty is None else dirty
        changed = {n for n in names if trial.get(n) is not accepted.get(n)}
        held: dict[str, list[ConfigIssue]] = {}
        for _ in range(len(changed) + 1):
            assembly = assemble_after(self.state.assembly, dict(trial), changed)
            dangling = dangling_after(self.snapshot, self.state.dangling, assembly.snapshot)
            new = [f for f in dangling if _reference_key(f) not in before]
            blamed: dict[str, list[ConfigIssue]] = {}
            for finding in new:
                source = finding.resource.origin.file
                if source in changed:
                    issue = _issue(finding, trial)
                    blamed.setdefault(source, []).append(
                        replace(
                            issue,
                            message=f"{issue.message}; this change is held back and the "
                            "previous version of this file stays in force until it resolves",
                        )
                    )
                    continue
                host, subset, _ = finding.subset_of or ("", "", "")
                for name in changed:
                    if _defines_rule_for(trial.get(name), host) or _defines_rule_for(
                        self.accepted.get(name), host
                    ):
                        blamed.setdefault(name, []).append(
                            ConfigIssue(
                                name,
                                _rule_line(trial.get(name) or self.accepted.get(name), host),
                                f'this change leaves subset "{subset}" of {host} undefined, '
                                f"but {finding.resource.ref} ({finding.resource.origin}) "
                                "routes to it; the change is held back and the previous "
                                "version of this file stays in force until nothing does",
                            )
                        )
            if not blamed and new:
                # Nothing points at one file (a mesh config change moved the root
                # namespace, a shadowed duplicate came back): hold back the whole change.
                blamed = {
                    name: [
                        ConfigIssue(
                            name,
                            1,
                            f"held back: with this change {_issue(f, trial)}",
                        )
                        for f in new[:3]
                    ]
                    for name in changed
                }
            if not blamed:
                break
            for name, found in blamed.items():
                previous = self.accepted.get(name)
                if previous is None:
                    trial.pop(name, None)
                else:
                    trial[name] = previous
                changed.discard(name)
                held.setdefault(name, []).extend(found)
        if held:
            assembly = assemble_after(self.state.assembly, dict(trial), changed | set(held))
            dangling = dangling_after(self.snapshot, self.state.dangling, assembly.snapshot)
        return held, assembly, dangling

    # ---- reporting ----------------------------------------------------------------------

    def all_issues(self) -> list[ConfigIssue]:
        return self.state.all_issues()


@dataclass(frozen=True)
class Change:
    """One resource a decision added, removed or changed."""

    what: str  # "added", "removed" or "changed"
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        sign = {"added": "+", "removed": "-", "changed": "~"}[self.what]
        return f"{sign}{self.kind} {self.namespace}/{self.name}"


def change_set(before: model.MeshConfig, after: model.MeshConfig) -> list[Change]:
    """The resources that differ between two snapshots, by kind/namespace/name. A
    resource of a file that did not change is the same object in both, so this is a
    comparison of identities: of what `after` was derived from `before` by when it was,
    of every resource otherwise."""
    removed, added = after.difference(before)
    old = {r.key: r for r in removed}
    new = {r.key: r for r in added}
    out = [Change("removed", *key) for key in old.keys() - new.keys()]
    for key, res in new.items():
        previous = old.get(key)
        if previous is None:
            out.append(Change("added", *key))
        elif previous is not res and previous.digest != res.digest:
            out.append(Change("changed", *key))
    return sorted(out, key=lambda c: (c.kind, c.namespace, c.name))


def _replaced(before: model.MeshConfig, after: model.MeshConfig) -> list[Change]:
    """The resources replaced between two snapshots, by object: one that moved to another
    file or line keeps its digest but not its origin, which findings name."""
    removed, added = after.difference(before)
    return [Change("changed", r.kind, r.namespace, r.name) for r in (*removed, *added)]


@dataclass(frozen=True)
class Candidate:
    """The version of a file that would be in force and its issues, with what that was
    decided from: a file whose version and fallback did not change gets the same answer."""

    parsed: ParsedFile | None
    previous: ParsedFile | None
    version: ParsedFile | None
    issues: tuple[ConfigIssue, ...]


def _digest(parsed: ParsedFile | None) -> str:
    return parsed.digest if parsed is not None else ""


def _transient(parsed: ParsedFile) -> bool:
    """Blank or unparsable: perhaps a write in progress."""
    return parsed.unparsable or (parsed.blank and parsed.ok)


def _moved_on(rejection: Rejection, latest: ParsedFile | None) -> bool:
    if latest is None:
        return rejection.digest != ""
    if not latest.ok or _transient(latest):
        return False
    return latest.digest != rejection.digest


def _issue(finding: CrossFinding, files: Mapping[str, ParsedFile]) -> ConfigIssue:
    res = finding.resource
    parsed = files.get(res.origin.file)
    doc = parsed.documents.get(res.key) if parsed is not None else None
    line = doc.line_of(finding.path) if doc else res.origin.line
    return ConfigIssue(
        res.origin.file, line, finding.message, res.ref, format_path(finding.path), finding.severity
    )


def _reference_key(finding: CrossFinding) -> tuple:
    return (finding.resource.key, finding.path, finding.subset_of)


def _rules_for(parsed: ParsedFile | None, host: str) -> list[model.ConfigResource]:
    if parsed is None:
        return []
    return [
        res
        for res in parsed.resources
        if res.kind == model.DESTINATION_RULE
        and host_matches(fqdn(res.spec.host, res.namespace), host)
    ]


def _defines_rule_for(parsed: ParsedFile | None, host: str) -> bool:
    return bool(_rules_for(parsed, host))


def _rule_line(parsed: ParsedFile | None, host: str) -> int:
    rules = _rules_for(parsed, host)
    return rules[0].origin.line if rules else 1


def _rejection_issues(
    name: str, before: ParsedFile | None, after: ParsedFile | None, message: str, others: int
) -> list[ConfigIssue]:
    """One issue per resource the rejected version changed (or one for the file)."""
    if others:
        text = (
            f"Envoy rejected a push that carried this change and {others} other changed "
            f"files: {message}; each is held back and retried alone to find which one "
            "Envoy refuses"
        )
    else:
        text = (
            f"Envoy rejected the configuration this version of the file produced: "
            f"{message}; the version Envoy last accepted stays in force until the file "
            "changes"
        )
    old = {res.key: res for res in before.resources} if before is not None else {}
    changed = [
        res
        for res in (after.resources if after is not None else [])
        if res.key not in old or old[res.key].spec != res.spec
    ]
    if not changed:
        return [ConfigIssue(name, 1, text)]
    return [ConfigIssue(name, res.origin.line, text, res.ref) for res in changed]
