"""Property: whatever a file holds, loading it reports config errors and never raises,
and whatever loads cleanly translates without raising.

Inputs are the seed examples mutated by Hypothesis, at the level of YAML values (a
scalar where a mapping belongs, a list where a string belongs, deep nesting, control
characters, huge numbers) and of text (bytes cut, inserted, swapped). A loader bug is
caught inside parse_file and reported as "could not be loaded ... please report this":
the property treats that as a failure too, so that every input gets a real message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import sidecar
from translators import model
from translators.snapshot import World, translate_many
from xds_server.config.cross_checks import cross_check, dangling_subsets
from xds_server.config.loader import ParsedFile, parse_file

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed"
SEED_TEXTS = [
    path.read_text() for path in sorted(SEED.glob("*.yaml")) + sorted(SEED.glob("bad/*.yaml"))
]
SEED_DOCUMENTS = [doc for text in SEED_TEXTS for doc in yaml.safe_load_all(text) if doc]
PROXIES = (
    sidecar("caller", "caller"),
    sidecar("reviews-v1", "reviews", "v1", ip="127.0.0.2"),
    sidecar("other", "caller", namespace="other", ip="127.0.0.3"),
)
SETTINGS = settings(
    # XDS_FUZZ_EXAMPLES=5000 for a longer hunt than the suite's.
    max_examples=int(os.environ.get("XDS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        ["", "*", "0s", "-1s", "1e400", "v1", "a{200}", "\r\n", "\x00", "~", "10000000000h"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path into a document (mapping keys and list indexes)."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


@st.composite
def mutated_documents(draw) -> str:
    """A seed document with a few of its values replaced by arbitrary ones."""
    doc = draw(st.sampled_from(SEED_DOCUMENTS))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        doc = _replace(doc, path, draw(values))
    return yaml.safe_dump(doc, allow_unicode=True)


def _same_kind(value: Any) -> st.SearchStrategy:
    """Values of the type already there, so that mutants pass the schema and reach the
    semantic checks and translation."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(min_value=-1, max_value=2**32) | st.sampled_from([0, 1, 65535, 65536])
    if isinstance(value, float):
        return st.floats(min_value=-1, max_value=1e12, allow_nan=False)
    if isinstance(value, str):
        return st.sampled_from(
            [
                "",
                "*",
                "v1",
                "v9",
                "0s",
                "1ms",
                "100000000000s",
                "a{200}",
                "[",
                "x\r\ny",
                "*.example.com",
                "::1",
                "not-an-ip",
                "HTTP",
                "TCP",
                "reviews",
                "ns/reviews",
            ]
        ) | st.text(max_size=12)
    if isinstance(value, list):
        return st.just([]) | st.just(value + value) | st.just(value[:1])
    if isinstance(value, dict):
        return st.just({}) | st.just(value)
    return st.none()


@st.composite
def retyped_documents(draw) -> str:
    """A seed document with a few of its values replaced by others of the same type."""
    doc = draw(st.sampled_from(SEED_DOCUMENTS))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from([p for p in _paths(doc) if p[:1] in (("spec",), ("data",))]))
        current = doc
        for part in path:
            current = current[part]
        doc = _replace(doc, path, draw(_same_kind(current)))
    return yaml.safe_dump(doc, allow_unicode=True)


@st.composite
def mutated_texts(draw) -> str:
    """A seed file with bytes cut, inserted or swapped."""
    text = draw(st.sampled_from(SEED_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["cut", "insert", "swap"]))
        if edit == "cut":
            text = text[:at] + text[at + draw(st.integers(1, 40)) :]
        elif edit == "insert":
            junk = draw(
                st.text(alphabet=st.sampled_from(list(":-[]{}&*!|>'\"#% \n\t0a")), max_size=8)
            )
            text = text[:at] + junk + text[at:]
        else:
            other = draw(st.integers(0, len(text)))
            a, b = sorted((at, other))
            text = text[:a] + text[b:] + text[a:b]
    return text


def _loads_and_translates(text: str) -> ParsedFile:
    parsed = parse_file("fuzz.yaml", text)
    internal = [str(i) for i in parsed.issues if "please report this" in i.message]
    assert not internal, internal
    for issue in parsed.issues:
        assert issue.file == "fuzz.yaml" and issue.line >= 1
    if parsed.ok and parsed.resources:
        config = model.MeshConfig(resources=tuple(parsed.resources))
        list(dangling_subsets(config))
        cross_check(config)
        translate_many(World(config, PROXIES), PROXIES)
    return parsed


@SETTINGS
@given(mutated_documents())
def test_mutated_values_load_or_are_reported(text: str) -> None:
    _loads_and_translates(text)


@SETTINGS
@given(retyped_documents())
def test_retyped_values_load_or_are_reported(text: str) -> None:
    _loads_and_translates(text)


@SETTINGS
@given(mutated_texts())
def test_mutated_text_loads_or_is_reported(text: str) -> None:
    _loads_and_translates(text)


def test_every_seed_loads_and_translates() -> None:
    for text in SEED_TEXTS:
        _loads_and_translates(text)
