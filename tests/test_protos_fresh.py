"""The generated API modules match the .proto sources."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_fresh(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    generated = sorted(p.name for p in tmp_path.glob("*_pb2.py"))
    assert generated == sorted(p.name for p in (ROOT / "protos").glob("*_pb2.py"))
    for name in generated:
        assert (tmp_path / name).read_text() == (ROOT / "protos" / name).read_text(), (
            f"protos/{name} is stale: run python protos/generate.py"
        )
