"""The `xds-server validate` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed"


def validate(directory: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xds_server", "validate", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_validate_refuses_seed_bad_example_with_file_and_line():
    result = validate(Path("bad"), cwd=SEED)
    assert result.returncode == 1
    assert "bad/missing-hosts.yaml:9: error: VirtualService default/reviews: spec.hosts" in (
        result.stderr
    )


def test_validate_accepts_good_files(tmp_path: Path):
    for name in ("01-traffic-split-reviews.yaml", "05-canary-helloworld.yaml"):
        (tmp_path / name).write_text((SEED / name).read_text())
    result = validate(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 resources valid, 0 errors" in result.stdout
