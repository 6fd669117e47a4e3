"""Tokens through real Envoy: a sidecar whose bootstrap carries its token (`xds-server
token`, `bootstrap --token`) is served and issued its certificate; one whose token is
for another identity is refused; and nothing the server shows holds a private key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import service_yaml
from xds_server.ca import CertificateAuthority
from xds_server.envoy_binary import find_envoy
from xds_server.launcher import free_port, http_get, stop_processes, wait_until

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "xds_server"]


def _cli(*args: str) -> str:
    return subprocess.run(
        [*CLI, *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def _envoy(
    tmp_path: Path, name: str, sa: str, token: str, xds: int, processes: list, root: Path
) -> int:
    admin = free_port()
    bootstrap = tmp_path / f"{name}.yaml"
    _cli(
        "bootstrap",
        "--node-id",
        name,
        "--labels",
        f"app={sa}",
        "--service-account",
        sa,
        "--xds-address",
        f"127.0.0.1:{xds}",
        "--admin-port",
        str(admin),
        "--outbound-port",
        str(free_port()),
        "--token",
        token,
        "--xds-root-cert",
        str(root),
        "-o",
        str(bootstrap),
    )
    processes.append(
        subprocess.Popen(
            [
                find_envoy(),
                "-c",
                str(bootstrap),
                "--disable-hot-restart",
                "-l",
                "warning",
                "--base-id",
                str(admin),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    return admin


def test_a_sidecar_with_its_token_gets_its_certificate_and_a_forged_one_nothing(tmp_path):
    config = tmp_path / "mesh"
    config.mkdir()
    (config / "svc.yaml").write_text(service_yaml("reviews"))
    xds, debug = free_port(), free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below)
    processes = [
        subprocess.Popen(
            [
                *CLI,
                "serve",
                "--config-dir",
                str(config),
                # Only xDS over TLS: the sidecars verify the server with the mesh root.
                "--xds-port",
                "off",
                "--xds-tls-port",
                str(xds),
                "--debug-port",
                str(debug),
            ],
            stdout=log,
            stderr=log,
        )
    ]
    server = f"http://127.0.0.1:{debug}"
    try:
        wait_until(lambda: http_get(f"{server}/readyz")[0] == 200, 30, "the server")
        good = _cli("token", "--config-dir", str(config), "--service-account", "sleep").strip()
        other = _cli("token", "--config-dir", str(config), "--service-account", "reviews").strip()
        root = config / ".xds-server" / "ca" / "root-cert.pem"
        sleep = _envoy(tmp_path, "sleep", "sleep", good, xds, processes, root)
        # Claims sa/sleep, holds a token for sa/reviews: refused.
        forged = _envoy(tmp_path, "impostor", "sleep", other, xds, processes, root)
        # Trusts another root: the server's certificate does not verify, no stream.
        strange = CertificateAuthority.load_or_create(tmp_path / "other-ca").root_pem
        (tmp_path / "other-root.pem").write_bytes(strange)
        doubter = _envoy(
            tmp_path, "doubter", "sleep", good, xds, processes, tmp_path / "other-root.pem"
        )

        def certz() -> dict:
            return json.loads(http_get(f"{server}/debug/certz")[1])

        wait_until(lambda: "sleep" in certz()["proxies"], 30, "sleep's certificate")
        cert = certz()["proxies"]["sleep"]["certificate"]
        assert cert["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/sleep"
        shown = _cli("cert", "--server", server, "--proxy", "sleep")
        assert "spiffe://cluster.local/ns/default/sa/sleep" in shown and cert["serial"] in shown
        assert "xds-server root CA" in _cli("cert", "--server", server)
        syncz = json.loads(http_get(f"{server}/debug/syncz")[1])
        proxies = {p["proxy"] for p in syncz["proxies"]}
        assert "sleep" in proxies and "impostor" not in proxies
        # Refused: it retries (with backoff), connected only for the moment of each try.
        wait_until(
            lambda: (
                "control_plane.connected_state: 0"
                in http_get(f"http://127.0.0.1:{forged}/stats?filter=connected_state")[1]
            ),
            10,
            "the impostor to be refused",
        )
        # The good one speaks xDS over TLS; the doubter never got past the handshake.
        stats = http_get(f"http://127.0.0.1:{sleep}/stats?filter=xds_cluster.ssl")[1]
        assert "cluster.xds_cluster.ssl.handshake: " in stats
        assert "cluster.xds_cluster.ssl.handshake: 0" not in stats, stats

        def doubts() -> str:
            return http_get(f"http://127.0.0.1:{doubter}/stats?filter=xds_cluster.ssl")[1]

        wait_until(
            lambda: (
                "ssl.fail_verify_error: " in doubts() and "ssl.fail_verify_error: 0" not in doubts()
            ),
            20,
            "the doubter to refuse the server's certificate",
        )
        assert "cluster.xds_cluster.ssl.handshake: 0" in doubts()
        assert "doubter" not in proxies
        # Nothing the server shows, or logs, holds a key.
        dump = http_get(f"{server}/debug/config_dump?proxy=sleep")[1]
        for text in (json.dumps(certz()), json.dumps(syncz), dump, shown):
            assert "PRIVATE KEY" not in text
    finally:
        stop_processes(processes)
        log.close()
    logged = (tmp_path / "server.log").read_text()
    assert "PRIVATE KEY" not in logged
    assert "refusing ADS stream" in logged and "grants ns/default/sa/reviews" in logged
