"""The live mesh page in a real headless Chromium: it renders a running mesh's proxies,
a broken file's error with file:line, and the traffic between services (from the
sidecars' own metrics). A screenshot is kept in test-artifacts/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import plain_service_yaml
from xds_server.launcher import LocalMesh, Workload, http_get, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("XDS_TEST_ARTIFACTS", ROOT / "test-artifacts"))
BROKEN = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken}
spec:
  hostz: [reviews]
"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("XDS_TEST_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (XDS_TEST_REQUIRE_CHROMIUM is set)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return found


def render(url: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=6000",
            "--window-size=1200,900",
            *flags,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_the_page_shows_proxies_errors_and_traffic(tmp_path_factory) -> None:
    chromium()
    root = tmp_path_factory.mktemp("page")
    config = root / "config"
    config.mkdir()
    (config / "services.yaml").write_text(plain_service_yaml("reviews"))
    workloads = [Workload("caller", "caller", app_port=None), Workload("reviews-v1", "reviews")]
    with LocalMesh(config, workloads, root / "work", tokens=True) as mesh:
        wait_until(mesh.all_synced, 30, "every proxy to sync")
        ip, port = mesh.outbound("caller")
        for _ in range(5):
            assert (
                http_get(f"http://{ip}:{port}/", timeout=5, headers={"Host": "reviews"})[0] == 200
            )
        (config / "broken.yaml").write_text(BROKEN)
        wait_until(
            lambda: "broken.yaml" in str(mesh.debug_json("/debug/configz")["issues"]),
            15,
            "the error to be reported",
        )
        dom = re.sub(r"\s+", " ", render(f"{mesh.debug_url}/", "--dump-dom").stdout)
        for proxy in ("caller.default", "reviews-v1.default"):
            assert f"<td>{proxy}</td>" in dom, dom[:2000]
        assert 'class="SYNCED">SYNCED' in dom
        assert re.search(r'class="issue error">[^<]*broken\.yaml:5: error: [^<]*hostz', dom), dom
        assert "vis-network" in dom and "<canvas" in dom  # the graph library drew
        graph = mesh.debug_json("/debug/graph")
        assert {"from": "caller", "to": "reviews"}.items() <= graph["edges"][0].items()
        assert graph["edges"][0]["requests"] >= 5
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "mesh-page.png"
        done = render(f"{mesh.debug_url}/", f"--screenshot={shot}")
        assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-500:]
