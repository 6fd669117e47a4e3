"""Bootstraps, envoy-configs/ and docker-compose.yml: fresh, and accepted by their tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xds_server.bootstrap import BootstrapOptions, bootstrap, workload_ports
from xds_server.envoy_binary import find_envoy
from xds_server.inject import InjectOptions, dump, inject

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "envoy-configs"


def envoy_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            find_envoy(),
            "--mode",
            "validate",
            "-c",
            str(path),
            "--disable-hot-restart",
            "-l",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def validate_with_identities(bootstraps: Path, out: Path) -> None:
    """What compose's xds-identity writes from these bootstraps, as each sidecar mounts
    it (its /var/run/xds), accepted by Envoy: every bootstrap, with its token."""
    from xds_server import identity_files

    names = [p.stem for p in bootstraps.glob("*.yaml") if "/var/run/xds/" in p.read_text()]
    assert names, bootstraps
    sidecars = [identity_files.Sidecar(n) for n in names]
    identity_files.write(out / "state", bootstraps, out / "identities", sidecars, 3600)
    for name in names:
        mounted = out / "identities" / name
        text = (mounted / "envoy.yaml").read_text()
        assert "Bearer xds1." in text and "PRIVATE KEY" not in text
        local = out / f"{name}.as-mounted.yaml"
        local.write_text(text.replace("/var/run/xds/", f"{mounted}/"))
        done = envoy_validate(local)
        assert done.returncode == 0, done.stdout + done.stderr


def test_envoy_configs_are_fresh(tmp_path: Path):
    subprocess.run(
        [sys.executable, str(CONFIGS / "generate.py"), str(tmp_path)], check=True, timeout=60
    )
    for generated in tmp_path.glob("*.yaml"):
        committed = CONFIGS / generated.name
        assert committed.read_text() == generated.read_text(), (
            f"{committed} is stale: run python envoy-configs/generate.py"
        )


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in CONFIGS.glob("*.yaml") if "/var/run/xds/" not in p.read_text()),
)
def test_envoy_accepts_bootstrap(name: str):
    result = envoy_validate(CONFIGS / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_accepts_the_compose_sidecars_with_their_identities(tmp_path: Path):
    validate_with_identities(CONFIGS, tmp_path)


def test_cli_bootstrap_with_several_ports(tmp_path: Path):
    out = tmp_path / "envoy.yaml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "xds_server",
            "bootstrap",
            "--node-id",
            "r2",
            "--namespace",
            "default",
            "--labels",
            "app=reviews,version=v2",
            "--service-account",
            "reviews",
            "--app-port",
            "9080",
            "--app-port",
            "9090",
            "--inbound-port",
            "16006",
            "--admin-port",
            "16000",
            "--outbound-port",
            "16001",
            "--xds-address",
            "127.0.0.1:1234",
            "-o",
            str(out),
        ],
        check=True,
        timeout=60,
    )
    doc = yaml.safe_load(out.read_text())
    meta = doc["node"]["metadata"]
    assert meta["WORKLOAD_PORTS"] == "9080:16006,9090:16007"
    assert meta["LABELS"] == {"app": "reviews", "version": "v2"}
    assert doc["admin"]["address"]["socket_address"]["port_value"] == 16000
    endpoint = doc["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    assert endpoint["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 1234,
    }
    assert envoy_validate(out).returncode == 0


def test_bootstrap_uses_dns_for_a_server_hostname():
    doc = bootstrap(BootstrapOptions(node_id="x", xds_address="xds-server:15010"))
    assert doc["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"
    assert [(p.app_port, p.inbound_port) for p in workload_ports([1, 2], [])] == [
        (1, 15006),
        (2, 15007),
    ]


def test_docker_compose_yml_is_the_injected_form_of_the_plain_one():
    plain = yaml.safe_load((ROOT / "docker-compose.plain.yml").read_text())
    options = InjectOptions(mode="capture", config_dir="./xds_server/demo_mesh")
    result = inject(plain, options)
    assert (ROOT / "docker-compose.yml").read_text() == dump(result.compose, "capture"), (
        "stale: run the command at the top of docker-compose.plain.yml"
    )
    for name, body in result.bootstraps.items():
        assert (CONFIGS / name).read_text() == body, f"envoy-configs/{name} is stale"


def _mount(volume) -> tuple[str, str, bool]:
    """(source, target, read-only) of a volume in compose's long or short form."""
    if isinstance(volume, dict):
        return volume["source"], volume["target"], bool(volume.get("read_only"))
    source, target, *mode = volume.split(":")
    return source, target, mode == ["ro"]


def test_docker_compose_config_parses():
    compose = shutil.which("docker-compose")
    if compose is None:
        if os.environ.get("XDS_TEST_REQUIRE_COMPOSE"):
            pytest.fail("docker-compose is required here (XDS_TEST_REQUIRE_COMPOSE is set)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    result = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    identity = services["xds-identity"]
    written = {entry.split(":")[0] for entry in identity["command"] if ":" in entry}
    mounts = {target: source for source, target, _ in map(_mount, identity["volumes"])}
    assert mounts["/bootstraps"] == str(CONFIGS)
    for name, service in services.items():
        if name.endswith("-sidecar"):
            app = name.removesuffix("-sidecar")
            ((source, target, read_only),) = map(_mount, service["volumes"])
            assert target == "/var/run/xds" and read_only
            # Its own directory of what xds-identity writes, and nobody else's.
            assert source == str(Path(mounts["/identities"]) / app)
            assert app in written and service["command"][2] == "/var/run/xds/envoy.yaml"
            assert service["depends_on"]["xds-identity"]["condition"] == (
                "service_completed_successfully"
            )
            assert service["network_mode"] == services[app]["network_mode"] == f"service:{app}-pod"
            boot = yaml.safe_load((CONFIGS / f"{app}.yaml").read_text())
            assert boot["node"]["id"] == app
            assert boot["node"]["metadata"]["INTERCEPTION_MODE"] == "REDIRECT"
    # The gateway gets its token the same way (the label xds-server.io/bootstrap).
    gateway = services["ingressgateway"]
    ((source, target, read_only),) = map(_mount, gateway["volumes"])
    assert source == str(Path(mounts["/identities"]) / "compose-ingressgateway")
    assert target == "/var/run/xds" and read_only and "compose-ingressgateway" in written
    # The server takes tokened streams over TLS only.
    server = services["xds-server"]["command"]
    assert "--require-tokens" in server and server[server.index("--xds-port") + 1] == "off"
    boot = yaml.safe_load((CONFIGS / "compose-ingressgateway.yaml").read_text())
    assert boot["node"]["metadata"]["ROLE"] == "gateway"
    assert boot["node"]["metadata"]["LABELS"]["istio"] == "ingressgateway"
