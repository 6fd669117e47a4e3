"""The `xds-server validate` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import service_yaml

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
    # The seeds route to subsets v1 and v2: their DestinationRules come with the services.
    (tmp_path / "services.yaml").write_text(service_yaml("reviews", "helloworld"))
    result = validate(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "6 resources valid, 0 errors" in result.stdout


def test_validate_refuses_a_route_to_a_subset_no_rule_defines(tmp_path: Path):
    (tmp_path / "vs.yaml").write_text((SEED / "01-traffic-split-reviews.yaml").read_text())
    result = validate(tmp_path)
    assert result.returncode == 1
    assert 'no DestinationRule for reviews.default.svc.cluster.local defines subset "v1"' in (
        result.stderr
    )
