"""Regenerate the Python modules for the API protos in this directory.

Run `python protos/generate.py` after editing a .proto; tests/test_protos_fresh.py fails
when the generated code no longer matches the sources.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent


def generate(out_dir: Path) -> None:
    """Compile every .proto here into `out_dir` (modules import each other as `protos.X`)."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    sources = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in out_dir.glob("*_pb2.py"):
        text = path.read_text()
        # protoc writes `import x_pb2`; make sibling imports package-relative.
        for src in sources:
            mod = src.removesuffix(".proto") + "_pb2"
            text = text.replace(f"\nimport {mod} as ", f"\nfrom protos import {mod} as ")
        path.write_text(text)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR)
