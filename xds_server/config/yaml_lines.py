"""YAML documents as plain Python values plus a map from field path to source line.

PyYAML's composer keeps line marks on nodes; we keep them so that every error can name
the line of the offending field, not just the file. Input is untrusted: libyaml (when
present) parses about ten times faster than pure Python and stops at 1000 levels, and
before a document is built we refuse nesting deeper than MAX_DEPTH and aliases that
expand to more than MAX_ALIAS_NODES nodes (a "billion laughs" file), so that no file can
exhaust memory, the stack or the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

# Istio resources nest about 12 levels deep; 100 leaves room for anything real.
MAX_DEPTH = 100
# Nodes reached a second time through aliases, per document.
MAX_ALIAS_NODES = 100_000

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
        loose = None
        for end in range(len(path), -1, -1):
            prefix = tuple(path[:end])
            found = self.lines.get(prefix)
            if found is None:
                if loose is None:
                    loose = {_loose(p): line for p, line in self.lines.items()}
                found = loose.get(_loose(prefix))
            if found is not None:
                return found
        return self.line


def _loose(path: Path) -> Path:
    return tuple(p.replace("_", "").lower() if isinstance(p, str) else p for p in path)


class YamlSyntaxError(ValueError):
    """The file is not valid YAML, or too deep or too aliased to load; `line` is 1-based."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def _record_lines(root: yaml.Node) -> dict[Path, int]:
    """Every field path's line, walking iteratively; refuses depth and alias bombs."""
    lines: dict[Path, int] = {}
    seen: set[int] = set()
    repeats = 0
    stack: list[tuple[yaml.Node, Path, int]] = [(root, (), root.start_mark.line + 1)]
    while stack:
        node, path, line = stack.pop()
        lines[path] = line
        if len(path) > MAX_DEPTH:
            raise YamlSyntaxError(f"nested deeper than {MAX_DEPTH} levels", line)
        if id(node) in seen:
            repeats += 1
            if repeats > MAX_ALIAS_NODES:
                raise YamlSyntaxError(f"aliases expand to more than {MAX_ALIAS_NODES} nodes", line)
        else:
            seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = key_node.value
                else:
                    key = f"<{key_node.tag.rsplit(':', 1)[-1]} key>"
                # Point at the key, not its value.
                stack.append((value_node, (*path, key), key_node.start_mark.line + 1))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((item, (*path, index), item.start_mark.line + 1))
    return lines


def read_documents(text: str) -> Iterator[YamlDocument]:
    """Parse every document in `text`; raises YamlSyntaxError with the failing line."""
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines = _record_lines(node)
            value = loader.construct_document(node)
            yield YamlDocument(value=value, line=node.start_mark.line + 1, lines=lines)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(f"invalid YAML: {exc.problem or exc}", line) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", 1) from exc
    except RecursionError:  # a structure the checks above did not foresee
        raise YamlSyntaxError("invalid YAML: nested too deeply", 1) from None
    finally:
        loader.dispose()
