"""The configuration in force, kept in the state directory so that a restart resumes it.

What is in force can differ from the files on disk: an edit held back because a route
would point at an undefined subset, a file with an error whose previous version still
counts, a version Envoy refused. A server that restarted and read only the disk would
apply all of those at once. So every version in force is kept here by content (its text
under its sha256) with an index of which file holds which version (and which versions
Envoy refused); at start the store takes that as the configuration in force and treats
the disk as an edit of it, with every rule of an edit.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from xds_server.text import safe_text

log = logging.getLogger(__name__)

INDEX = "config.json"
BLOBS = "config"
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

    @property
    def _blobs(self) -> Path | None:
        return self.directory / BLOBS if self.directory is not None else None

    def keep_text(self, digest: str, text: str) -> None:
        """Keep a version's text, in case it becomes (or stays) the one in force."""
        if self._blobs is None or not digest:
            return
        path = self._blobs / f"{digest}.yaml"
        if path.exists():
            return
        if self._write(path, text):
            self._kept += 1

    def text(self, digest: str) -> str | None:
        if self._blobs is None:
            return None
        try:
            return (self._blobs / f"{digest}.yaml").read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def save(
        self,
        accepted: Mapping[str, Remembered],
        rejected: Mapping[str, RememberedRejection],
        recent: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        """Write the index (only when it changed). Texts no longer referenced (`recent`:
        digests a rollback may still bring back) are dropped at the first write and then
        once SWEEP_AFTER new texts were kept, so an edit does not list the whole directory."""
        if self.directory is None:
            return
        index = {
            "format": FORMAT,
            "accepted": {n: [r.digest, r.mtime_ns] for n, r in sorted(accepted.items())},
            "rejected": {
                n: [r.digest, r.fallback, r.group, r.suspect, r.message]
                for n, r in sorted(rejected.items())
            },
        }
        text = json.dumps(index, sort_keys=True)
        if text == self._saved:
            return
        first = not self._saved
        if self._write(self.directory / INDEX, text):
            self._saved = text
            if first or self._kept >= SWEEP_AFTER:
                keep = {r.digest for r in accepted.values()} | set(recent())
                keep |= {r.fallback for r in rejected.values() if r.fallback}
                self._collect(keep)
                self._kept = 0

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
        blobs = self._blobs
        if blobs is None or not blobs.is_dir():
            return
        for path in blobs.iterdir():
            if path.suffix == ".yaml" and path.stem not in keep:
                path.unlink(missing_ok=True)

    def _write(self, path: Path, text: str) -> bool:
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
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
