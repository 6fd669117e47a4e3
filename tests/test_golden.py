"""Translation of every seed example and of the demo mesh equals its golden file.

After an intended change: `python -m tests.golden_cases`, and review the diff."""

from __future__ import annotations

import difflib

import pytest

from tests.golden_cases import GOLDEN, cases, render

CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_translation_matches_its_golden_file(name: str) -> None:
    expected = (GOLDEN / f"{name}.json").read_text()
    actual = render(CASES[name])
    if actual != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    expected.splitlines(keepends=True),
                    actual.splitlines(keepends=True),
                    f"golden/{name}.json",
                    "translated now",
                )
            )[:80]
        )
        pytest.fail(f"{name} differs (python -m tests.golden_cases to accept):\n{diff}")
