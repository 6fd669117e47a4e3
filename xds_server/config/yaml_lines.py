"""YAML documents as plain Python values plus a map from field path to source line.

PyYAML's composer keeps line marks on nodes; we keep them so that every error can name
the line of the offending field, not just the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass
class YamlDocument:
    """One document of a multi-document file: its value and where each field was written."""

    value: Any
    line: int  # 1-based line where the document's content starts
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """The line of `path`, or of its closest ancestor that was written in the file.

        Field names match whether written in camelCase or snake_case.
        """
        loose = {_loose(p): line for p, line in self.lines.items()}
        for end in range(len(path), -1, -1):
            prefix = tuple(path[:end])
            found = self.lines.get(prefix, loose.get(_loose(prefix)))
            if found is not None:
                return found
        return self.line


def _loose(path: Path) -> Path:
    return tuple(p.replace("_", "").lower() if isinstance(p, str) else p for p in path)


class YamlSyntaxError(ValueError):
    """The file is not valid YAML; `line` is 1-based."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def _record_lines(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*path, key)
            _record_lines(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1  # point at the key, not its value
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), lines)


def read_documents(text: str) -> Iterator[YamlDocument]:
    """Parse every document in `text`; raises YamlSyntaxError with the failing line."""
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: dict[Path, int] = {}
            _record_lines(node, (), lines)
            value = loader.construct_document(node)
            yield YamlDocument(value=value, line=node.start_mark.line + 1, lines=lines)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(f"invalid YAML: {exc.problem or exc}", line) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", 1) from exc
    finally:
        loader.dispose()
