"""The configuration in force, kept in the state directory so that a restart resumes it.

What is in force can differ from the files on disk: an edit held back because a route
would point at an undefined subset, a file with an error whose previous version still
counts, a version Envoy refused. A server that restarted and read only the disk would
apply all of those at once. So every version in force is kept here by content (its text
under its sha256; the texts of a first load together in one pack) with an index of which
file holds which version (and which versions Envoy refused); at start the store takes
that as the configuration in force and treats the disk as an edit of it, with every rule
of an edit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from xds_server.text import safe_text

log = logging.getLogger(__name__)

INDEX = "config.json"
BLOBS = "config"
PACK_SUFFIX = ".pack.json"  # many texts in one file: {digest: text}
FORMAT = 1
# New texts kept between two sweeps of the ones no longer referenced.
SWEEP_AFTER = 64


@dataclass(frozen=True)
class Remembered:
    """One file's version in force: its digest and modification time."""

    digest: str
    mtime_ns: int


@dataclass(frozen=True)
class RememberedRejection:
    digest: str  # the refused version ("" for a refused deletion)
    fallback: str | None  # digest of the version that stays in force, if any
    group: int
    suspect: bool
    message: str


class ConfigMemory:
    """Versions in force under `directory` (None: remember nothing)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._saved = ""
        self._warned = False
        self._kept = 0  # texts written since the last sweep
        self._stored: set[str] | None = None  # digests whose text is kept
        self._made: set[Path] = set()  # directories known to exist
        self._pending: dict[str, str] | None = None  # texts waiting for a pack (bulk())
        self._pack_texts: dict[str, str] | None = None  # the texts in packs, by digest
        # The index's accepted entries: names in order, each rendered, and what each holds.
        self._order: list[str] = []
        self._parts: list[str] = []
        self._entries: dict[str, tuple[str, int]] = {}

    @property
    def _blobs(self) -> Path | None:
        return self.directory / BLOBS if self.directory is not None else None

    def keep_text(self, digest: str, text: str) -> None:
        """Keep a version's text, in case it becomes (or stays) the one in force. Within
        a bulk (see bulk()), texts wait and go into one pack file at the next save()."""
        if self._blobs is None or not digest:
            return
        if self._stored is None:  # listed once: a stat per file costs at 5000 files
            blobs = self._blobs
            self._stored = {p.stem for p in blobs.glob("*.yaml")} if blobs.is_dir() else set()
        if digest in self._stored or digest in self._packs_read():
            return
        if self._pending is not None:
            self._pending[digest] = text
            return
        if self._write(self._blobs / f"{digest}.yaml", text):
            self._kept += 1
            self._stored.add(digest)

    def bulk(self) -> None:
        """Texts kept from now until the next save() go into one file, not one each:
        a first load of thousands of files creates one file, not thousands."""
        if self._blobs is not None and self._pending is None:
            self._pending = {}

    def text(self, digest: str) -> str | None:
        if self._blobs is None:
            return None
        try:
            return (self._blobs / f"{digest}.yaml").read_text()
        except (OSError, UnicodeDecodeError):
            pass
        return self._packs_read().get(digest)

    def _packs_read(self) -> dict[str, str]:
        """The texts in pack files (read once)."""
        if self._pack_texts is None:
            self._pack_texts = {}
            for path in sorted(self._blobs.glob(f"*{PACK_SUFFIX}")) if self._blobs else ():
                try:
                    texts = json.loads(path.read_text())
                    self._pack_texts.update(
                        {str(d): t for d, t in texts.items() if isinstance(t, str)}
                    )
                except (OSError, ValueError, AttributeError, RecursionError) as exc:
                    log.warning("ignoring %s: %s", path, safe_text(str(exc)))
        return self._pack_texts

    def _flush(self) -> bool:
        """Write the texts waiting since bulk() as one pack; False if that failed."""
        pending, self._pending = self._pending, None
        if not pending:
            return True
        name = hashlib.sha256("".join(sorted(pending)).encode()).hexdigest()[:32]
        if not self._write(self._blobs / f"{name}{PACK_SUFFIX}", json.dumps(pending)):
            return False
        self._packs_read().update(pending)
        return True

    def save(
        self,
        accepted: Mapping[str, Remembered],
        rejected: Mapping[str, RememberedRejection],
        recent: Callable[[], Iterable[str]] = tuple,
        changed: Iterable[str] | None = None,
    ) -> None:
        """Write the index (only when it changed; `changed`: the only files whose entry
        may have, None: any; `accepted`: anything with a digest and a modification time,
        a ParsedFile too). Texts no longer referenced (`recent`: digests a rollback may
        still bring back) are dropped at the first write and then once SWEEP_AFTER new
        texts were kept, so an edit does not list the whole directory."""
        if self.directory is None:
            return
        rejections = {
            n: [r.digest, r.fallback, r.group, r.suspect, r.message]
            for n, r in sorted(rejected.items())
        }
        text = (
            f'{{"accepted": {self._accepted_json(accepted, changed)}, "format": {FORMAT}, '
            f'"rejected": {json.dumps(rejections, sort_keys=True)}}}'
        )
        flushed = self._flush()
        if text == self._saved:
            return
        first = not self._saved
        if flushed and self._write(self.directory / INDEX, text):
            self._saved = text
            if first or self._kept >= SWEEP_AFTER:
                keep = {r.digest for r in accepted.values()} | set(recent())
                keep |= {r.fallback for r in rejected.values() if r.fallback}
                self._collect(keep)
                self._kept = 0

    def _accepted_json(
        self, accepted: Mapping[str, Remembered], changed: Iterable[str] | None
    ) -> str:
        """The "accepted" object of the index, from each file's entry rendered once and
        kept in name order (at thousands of files, rendering and sorting them all again
        at every edit cost milliseconds). `changed`: the only names whose entry may
        differ from the last call's (None: any)."""
        order, parts, entries = self._order, self._parts, self._entries
        if changed is None or not order:
            order[:] = sorted(accepted)
            parts[:] = [_entry(name, accepted[name]) for name in order]
            entries.clear()
            entries.update((n, (r.digest, r.mtime_ns)) for n, r in accepted.items())
        else:
            for name in changed:
                entry, at = accepted.get(name), bisect_left(order, name)
                present = at < len(order) and order[at] == name
                if entry is None:
                    if present:
                        del order[at], parts[at]
                        entries.pop(name, None)
                    continue
                if present and entries.get(name) == (entry.digest, entry.mtime_ns):
                    continue
                if present:
                    parts[at] = _entry(name, entry)
                else:
                    order.insert(at, name)
                    parts.insert(at, _entry(name, entry))
                entries[name] = (entry.digest, entry.mtime_ns)
        return "{" + ", ".join(parts) + "}"

    def load(self) -> tuple[dict[str, Remembered], dict[str, RememberedRejection]] | None:
        """The remembered index, or None (nothing remembered, or not readable)."""
        if self.directory is None:
            return None
        path = self.directory / INDEX
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError("another format")
            accepted = {
                str(n): Remembered(str(d), int(m)) for n, (d, m) in data["accepted"].items()
            }
            rejected = {
                str(n): RememberedRejection(
                    str(d), str(f) if f else None, int(g), bool(s), str(msg)
                )
                for n, (d, f, g, s, msg) in data["rejected"].items()
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            log.warning("ignoring %s: %s", path, safe_text(str(exc)))
            return None
        return accepted, rejected

    def _collect(self, keep: set[str]) -> None:
        """Drop texts not in `keep`: single ones, and packs none of whose texts is."""
        blobs = self._blobs
        if blobs is None or not blobs.is_dir():
            return
        for path in blobs.iterdir():
            if path.name.endswith(PACK_SUFFIX):
                try:
                    held = json.loads(path.read_text())
                except (OSError, ValueError, RecursionError):
                    continue
                if isinstance(held, dict) and not keep.intersection(held):
                    path.unlink(missing_ok=True)
                    for digest in held:
                        self._packs_read().pop(digest, None)
            elif path.suffix == ".yaml" and path.stem not in keep:
                path.unlink(missing_ok=True)
                if self._stored is not None:
                    self._stored.discard(path.stem)

    def _write(self, path: Path, text: str) -> bool:
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            if path.parent not in self._made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(path.parent)
            temporary.write_text(text)
            os.replace(temporary, path)
        except OSError as exc:
            if not self._warned:
                log.warning(
                    "cannot keep the configuration in force in %s (%s): after a restart, "
                    "the files on disk apply as they are",
                    self.directory,
                    exc,
                )
                self._warned = True
            return False
        return True


def _entry(name: str, entry: Remembered) -> str:
    return f"{json.dumps(name)}: {json.dumps([entry.digest, entry.mtime_ns])}"
