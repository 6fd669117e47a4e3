"""Which files are configuration, and reading one safely.

One rule for the first load and for the watcher: `*.yaml` / `*.yml` files under the config
directory, skipping every path with a part that starts with "." (hidden files, editors'
`.#lock` and `.swp` files, our own `.xds-server/` state) and editor backups ending in
"~". Files are untrusted: only regular files are read (a FIFO would block forever, a
symlink to /dev/zero never ends), never more than a size limit, and as UTF-8.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePath

YAML_SUFFIXES = (".yaml", ".yml")
DEFAULT_MAX_BYTES = 8 * 1024 * 1024


def is_config_file(relative: PurePath) -> bool:
    """Whether a path (relative to the config directory) names a config file."""
    parts = relative.parts
    if not parts or any(part.startswith(".") for part in parts):
        return False
    return parts[-1].endswith(YAML_SUFFIXES)


def config_files(directory: Path) -> list[Path]:
    """Every config file under `directory`, sorted; hidden directories are not entered.
    Symlinked directories are followed, as the watcher follows them, each real directory
    once (no loops)."""
    found = []
    visited: set[str] = set()
    for root, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(root)
        for name in files:
            path = base / name
            if is_config_file(path.relative_to(directory)):
                found.append(path)
    return sorted(found)


class FileGone(Exception):
    """The file no longer exists (or is now a directory): it simply is not config."""


class UnreadableFile(Exception):
    """The file exists but cannot be config; `line` locates the problem when known."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class FileContent:
    text: str
    mtime_ns: int


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_config_file(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> FileContent:
    """The file's text; FileGone if absent, UnreadableFile if it cannot be config.

    Opened non-blocking so that a FIFO cannot hang the server, checked on the open
    descriptor (no race with a rename), and read only up to the limit."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise FileGone() from None
    except OSError as exc:
        raise UnreadableFile(f"cannot open file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FileGone()
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(f"not read: {_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise UnreadableFile(_too_large(info.st_size, max_bytes))
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # it grew while we read
            raise UnreadableFile(_too_large(total, max_bytes))
        data = b"".join(chunks)
    except OSError as exc:
        raise UnreadableFile(f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UnreadableFile(f"not UTF-8 text (byte {exc.start})", line) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise UnreadableFile("not a text file (contains NUL characters)", line)
    return FileContent(text, info.st_mtime_ns)


def _too_large(size: int, limit: int) -> str:
    return (
        f"not read: {size} bytes is over the {limit}-byte limit "
        "(serve --max-file-bytes; split the file or raise the limit)"
    )
