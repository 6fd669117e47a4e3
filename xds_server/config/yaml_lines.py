"""YAML documents as plain Python values plus a map from field path to source line.

PyYAML's composer keeps line marks on nodes; we keep them so that every error can name
the line of the offending field, not just the file. Input is untrusted: libyaml (when
present) parses about ten times faster than pure Python, and its event stream is scanned
before any document is built, refusing nesting deeper than MAX_DEPTH, more than MAX_NODES
values, and aliases that expand to more than MAX_ALIAS_NODES values (a "billion laughs"
file), so that no file can exhaust memory, the stack or the CPU. The budgets hold per
file, so that many small documents cannot add up to what one large one may not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

_QUOTED = re.compile(r"'([^']{24})[^']{8,}'")


def _quoted_cut(error: object) -> str:
    """A parser's message without long quoted text: it may be a value from the file (a
    Secret's key, a token) that must not reach logs whole."""
    return _QUOTED.sub(lambda m: f"'{m.group(1)[:12]}...'", str(error))


# Istio resources nest about 12 levels deep; 64 leaves room for anything real.
MAX_DEPTH = 64
# Nodes reached a second time through aliases, per file.
MAX_ALIAS_NODES = 10_000
# Values per file, aliases and documents included: about what a file at the default size
# limit (8 MiB) holds, so that no smaller file can cost more than such a file.
MAX_NODES = 1_500_000
# Values per document: a document is built whole in memory (about 1 kB a value), and no
# resource needs more (a ServiceEntry with 10,000 endpoints has about 50,000).
MAX_DOCUMENT_NODES = 100_000
# A text this short without anchors ("&") needs no scan before it is built: without an
# anchor no alias can expand, a value takes at least a character (so there are fewer
# than MAX_DOCUMENT_NODES), and libyaml refuses nesting deeper than 1000 levels.
PRESCAN_FREE = 100_000
# Lines are kept down to this depth; deeper fields report their closest ancestor's line,
# so that the map grows with the nodes, not with nodes times depth.
LINE_DEPTH = 24

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


class _Budget:
    """What one file may still cost: nodes visited, and nodes reached again via aliases."""

    def __init__(self) -> None:
        self.nodes = MAX_NODES
        self.repeats = MAX_ALIAS_NODES


_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"  # the key "=", which PyYAML reads as a string


class _Builder:
    """One document's value and line map, from its node tree in one walk: plain strings,
    mappings and sequences are built here (PyYAML's constructor is a tenth of a
    millisecond a node slower); everything else (numbers, booleans, timestamps, merge
    keys, sets, unknown tags) is left to the loader's constructor, which knows YAML's
    rules. Refuses depth and alias bombs."""

    def __init__(self, loader: Any, budget: _Budget) -> None:
        self.loader = loader
        self.budget = budget
        self.lines: dict[Path, int] = {}
        self.seen: set[int] = set()

    def document(self, root: yaml.Node) -> Any:
        try:
            return self._node(root, (), root.start_mark.line + 1, True)
        finally:
            loader = self.loader
            loader.constructed_objects = {}
            loader.recursive_objects = {}
            loader.state_generators = []

    def _node(self, node: yaml.Node, path: Path, line: int, build: bool) -> Any:
        """The node's value (when `build`), recording the lines of it and its children."""
        if len(path) <= LINE_DEPTH:
            self.lines[path] = line
        if len(path) > MAX_DEPTH:
            raise YamlSyntaxError(f"nested deeper than {MAX_DEPTH} levels", line)
        budget = self.budget
        budget.nodes -= 1
        if budget.nodes < 0:
            raise YamlSyntaxError(f"more than {MAX_NODES} values in one file", line)
        if id(node) in self.seen:
            budget.repeats -= 1
            if budget.repeats < 0:
                raise YamlSyntaxError(f"aliases expand to more than {MAX_ALIAS_NODES} values", line)
        else:
            self.seen.add(id(node))
        tag = node.tag
        if isinstance(node, yaml.MappingNode):
            plain = build and tag == _MAP
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE:
                    key = key_node.value
                else:
                    key = f"<{key_node.tag.rsplit(':', 1)[-1]} key>"
                    plain = False
                # Point at the key, not its value.
                child = (*path, key)
                value = self._node(value_node, child, key_node.start_mark.line + 1, plain)
                if plain:
                    plain_key = key_node.tag in (_STR, _VALUE)
                    out[key if plain_key else self._scalar(key_node)] = value
            if build and not plain:
                return self.loader.construct_object(node, deep=True)
            return out
        if isinstance(node, yaml.SequenceNode):
            plain = build and tag == _SEQ
            items = [
                self._node(item, (*path, index), item.start_mark.line + 1, plain)
                for index, item in enumerate(node.value)
            ]
            if build and not plain:
                return self.loader.construct_object(node, deep=True)
            return items
        if not build:
            return None
        return node.value if tag == _STR else self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        return self.loader.construct_object(node, deep=True)


def _prescan(text: str) -> None:
    """Refuse, from libyaml's event stream and before anything is built in memory, a file
    nested too deep, with too many values, or whose aliases expand too far (sizes of
    anchored values are known when they end; an alias costs its anchor's size)."""
    depth = nodes = expansion = document_start = 0
    open_anchors: set[str] = set()
    sizes: dict[str, int] = {}
    stack: list[tuple[int, str | None]] = []
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1 if event.start_mark else 1
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlSyntaxError(f"nested deeper than {MAX_DEPTH} levels", line)
            nodes += 1
            stack.append((nodes, event.anchor))
            if event.anchor:
                open_anchors.add(event.anchor)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            start, anchor = stack.pop()
            if anchor:
                open_anchors.discard(anchor)
                sizes[anchor] = nodes - start + 1
        elif isinstance(event, yaml.DocumentStartEvent):
            nodes += 1
            document_start = nodes
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                raise YamlSyntaxError(f"alias *{event.anchor} refers to itself", line)
            size = sizes.get(event.anchor, 1)
            nodes += size
            expansion += size
            if expansion > MAX_ALIAS_NODES:
                raise YamlSyntaxError(f"aliases expand to more than {MAX_ALIAS_NODES} values", line)
        if nodes > MAX_NODES:
            raise YamlSyntaxError(f"more than {MAX_NODES} values in one file", line)
        if nodes - document_start > MAX_DOCUMENT_NODES:
            raise YamlSyntaxError(f"more than {MAX_DOCUMENT_NODES} values in one document", line)


def read_documents(text: str) -> Iterator[YamlDocument]:
    """Parse every document in `text`; raises YamlSyntaxError with the failing line."""
    loader = _Loader(text)
    budget = _Budget()
    line = 1
    try:
        if len(text) > PRESCAN_FREE or "&" in text:
            _prescan(text)
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            line = node.start_mark.line + 1
            builder = _Builder(loader, budget)
            value = builder.document(node)
            yield YamlDocument(value=value, line=line, lines=builder.lines)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSyntaxError(f"invalid YAML: {_quoted_cut(exc.problem or exc)}", line) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {_quoted_cut(exc)}", 1) from exc
    except YamlSyntaxError:
        raise
    except RecursionError:  # a structure the checks above did not foresee
        raise YamlSyntaxError("invalid YAML: nested too deeply", line) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise YamlSyntaxError(
            f"invalid YAML value in this document: {_quoted_cut(exc)}", line
        ) from None
    finally:
        loader.dispose()
