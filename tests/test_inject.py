"""`xds-server inject`: a user's docker-compose file gets a sidecar per app.

The injected forms of tests/inject/compose.yaml are kept in
tests/inject/compose.injected.yaml (proxy mode) and compose.captured.yaml (capture mode);
`python -m tests.test_inject` rewrites them after an intended change, and the diff is the
review.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_envoy_configs import validate_with_identities
from xds_server import inject
from xds_server.config.loader import parse_file

HERE = Path(__file__).resolve().parent / "inject"
PLAIN, INJECTED = HERE / "compose.yaml", HERE / "compose.injected.yaml"
GOLDEN = {"proxy": INJECTED, "capture": HERE / "compose.captured.yaml"}


def _injected(text: str, mode: str = "proxy") -> inject.Injected:
    return inject.inject(yaml.safe_load(text), inject.InjectOptions(mode=mode))


@pytest.mark.parametrize("mode", inject.MODES)
def test_the_injected_file_is_its_golden_form(mode: str) -> None:
    assert (
        inject.dump(_injected(PLAIN.read_text(), mode).compose, mode) == GOLDEN[mode].read_text()
    ), "python -m tests.test_inject to accept the change"


@pytest.mark.parametrize("mode", inject.MODES)
def test_injecting_twice_changes_nothing(mode: str) -> None:
    once = _injected(PLAIN.read_text(), mode)
    twice = inject.inject(once.compose, inject.InjectOptions(mode=mode))
    assert twice.compose == once.compose
    assert twice.bootstraps == once.bootstraps  # the same bootstraps, written again
    assert twice.services == once.services


@pytest.mark.parametrize(("first", "then"), [("proxy", "capture"), ("capture", "proxy")])
def test_an_injected_file_keeps_its_mode(first: str, then: str) -> None:
    once = _injected(PLAIN.read_text(), first).compose
    with pytest.raises(inject.InjectError, match=f"--mode {first} already"):
        inject.inject(once, inject.InjectOptions(mode=then))


@pytest.mark.parametrize("mode", inject.MODES)
def test_sidecars_reach_the_control_plane_on_their_networks_and_by_its_name(mode) -> None:
    text = """
x-app: &app {image: example/app, networks: [back], profiles: [full]}
services:
  web: *app
  api: {<<: *app, labels: {xds-server.io/tcp-ports: "81"}, expose: ["81"]}
  api-v2: {image: example/app, labels: {app: api}, expose: ["81"]}
networks: {back: {}}
"""
    result = _injected(text, mode)
    services = result.compose["services"]
    assert services["xds-server"]["networks"] == ["back", "default"]
    for part in ("sidecar", "pod", "init") if mode == "capture" else ("sidecar",):
        assert services[f"web-{part}"]["profiles"] == ["full"]
    assert "name: tcp-81" in result.services["api"]  # one version's label is enough
    # A shared anchor is written out at each place: the text reads back the same.
    dumped = inject.dump(result.compose, mode)
    assert "&id" not in dumped
    again = inject.inject(yaml.safe_load(dumped), inject.InjectOptions(mode=mode))
    assert inject.dump(again.compose, mode) == dumped
    # A control plane the user labelled, under another name, is the one sidecars ask.
    own = "services:\n  web: {}\n  cp: {image: x, labels: {xds-server.io/role: control-plane}}\n"
    result = _injected(own, mode)
    assert "xds-server" not in result.compose["services"]
    assert (
        "cp:15010" in result.bootstraps["web.yaml"]
        or "address: cp" in result.bootstraps["web.yaml"]
    )
    depends = result.compose["services"]["web-sidecar"]["depends_on"]
    assert "cp" in depends


def test_capture_makes_each_app_a_pod_whose_rules_are_set_before_it_starts() -> None:
    services = _injected(PLAIN.read_text(), "capture").compose["services"]
    for app in ("productpage", "reviews-v1", "reviews-v2", "mysql"):
        pod, init, sidecar = (services[f"{app}-{part}"] for part in ("pod", "init", "sidecar"))
        assert services[app]["network_mode"] == sidecar["network_mode"] == f"service:{app}-pod"
        assert init["network_mode"] == f"service:{app}-pod"
        done = {"condition": "service_completed_successfully"}
        assert services[app]["depends_on"][f"{app}-init"] == done
        assert sidecar["depends_on"][f"{app}-init"] == done
        assert init["command"][:2] == ["iptables", "--apply"] and "NET_ADMIN" in init["cap_add"]
        assert sidecar["environment"] == {"ENVOY_UID": "1337", "ENVOY_GID": "1337"}
        # The namespace's settings moved to the pod, which other services find by the
        # app's name; the app keeps no HTTP_PROXY.
        assert not {"ports", "expose", "networks"} & set(services[app])
        assert pod["networks"]["default"]["aliases"] == [app]
        assert "HTTP_PROXY" not in str(services[app].get("environment"))
    assert services["productpage-pod"]["ports"] == ["9080:9080"]
    assert "metrics-pod" not in services
    bootstrap = yaml.safe_load(_injected(PLAIN.read_text(), "capture").bootstraps["mysql.yaml"])
    assert bootstrap["node"]["metadata"]["INTERCEPTION_MODE"] == "REDIRECT"


def test_each_app_gets_a_sidecar_in_its_network_namespace() -> None:
    services = _injected(PLAIN.read_text()).compose["services"]
    for app in ("productpage", "reviews-v1", "reviews-v2", "mysql"):
        sidecar = services[f"{app}-sidecar"]
        assert sidecar["network_mode"] == f"service:{app}"
        assert sidecar["labels"][inject.ROLE] == "sidecar"
        env = services[app]["environment"]
        assert (
            ("HTTP_PROXY=http://127.0.0.1:15001" in env)
            if isinstance(env, list)
            else (env["HTTP_PROXY"] == "http://127.0.0.1:15001")
        )
    assert "metrics-sidecar" not in services  # opted out
    assert "LOG=debug" in services["reviews-v1"]["environment"]  # the app's own env stays
    assert services["xds-server"]["labels"][inject.ROLE] == "control-plane"


def test_bootstraps_carry_the_apps_labels_and_ports_and_envoy_accepts_them(tmp_path) -> None:
    result = _injected(PLAIN.read_text())
    reviews = yaml.safe_load(result.bootstraps["reviews-v2.yaml"])
    meta = reviews["node"]["metadata"]
    assert meta["LABELS"] == {"app": "reviews", "version": "v2"}
    assert meta["WORKLOAD_PORTS"] == "9080:15006"
    assert reviews["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"  # xds-server:15012
    (tmp_path / "boot").mkdir()
    for name, body in result.bootstraps.items():
        (tmp_path / "boot" / name).write_text(body)
    validate_with_identities(tmp_path / "boot", tmp_path)


def test_emitted_services_are_valid_and_merge_versions() -> None:
    result = _injected(PLAIN.read_text())
    assert set(result.services) == {"productpage", "reviews", "mysql"}
    for app, text in result.services.items():
        parsed = parse_file(f"{app}-service.yaml", text)
        assert parsed.ok, [str(i) for i in parsed.issues]
    assert "name: tcp-3306" in result.services["mysql"]  # the label says TCP


@pytest.mark.parametrize(
    ("compose", "message", "mode"),
    [
        ("services: {a: {ports: ['80-90:80-90']}}", "services.a.ports", "proxy"),
        ("services: {a: {labels: 3}}", "services.a.labels", "proxy"),
        ("services: {a: {expose: ['15001']}}", "services.a.expose", "proxy"),
        ("services: {Big: {}}", "services.Big", "proxy"),
        ("services: [a]", "services", "proxy"),
        ("services: {a: {expose: ['15053']}}", "services.a.expose", "capture"),
        ("services: {a: {expose: ['80-90']}}", "services.a.expose", "capture"),
        ("services: {a: {}, a-pod: {image: x}}", "services.a-pod", "capture"),
        (
            "services: {a: {}, a-sidecar: {labels: {xds-server.io/inject: 'false'}}}",
            "services.a-sidecar",
            "proxy",
        ),
        ("services: {a: {scale: 2}}", "services.a.scale", "proxy"),
        ("services: {a: {deploy: {replicas: 3}}}", "services.a.deploy.replicas", "capture"),
        ("services: {a: {extends: {service: b}}, b: {}}", "services.a.extends", "capture"),
        ("services: {b: {depends_on: 3}}", "services.b.depends_on", "capture"),
        ("services: {a: {networks: 3}}", "services.a.networks", "capture"),
    ],
)
def test_what_cannot_be_injected_names_the_service_and_field(compose, message, mode) -> None:
    with pytest.raises(inject.InjectError, match=message.replace(".", r"\.")):
        _injected(compose, mode)


def test_the_command_names_the_file_and_line_of_a_bad_field(tmp_path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  web:\n    image: nginx\n    ports:\n      - 80-90:80-90\n")
    done = _inject(str(bad))
    assert done.returncode == 1
    assert f"{bad}:4: services.web.ports:" in done.stderr
    bad.write_text("services: [\n")
    done = _inject(str(bad))
    assert done.returncode == 1 and f"{bad}:2: invalid YAML" in done.stderr


def _inject(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xds_server", "inject", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_writes_the_file_bootstraps_and_services(tmp_path) -> None:
    out = tmp_path / "docker-compose.yml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "xds_server",
            "inject",
            str(PLAIN),
            "-o",
            str(out),
            "--emit-services",
            str(tmp_path / "mesh"),
        ],
        check=True,
        timeout=60,
    )
    assert out.read_text() == INJECTED.read_text()
    assert sorted(p.name for p in (tmp_path / "envoy-configs").iterdir()) == [
        "mysql.yaml",
        "productpage.yaml",
        "reviews-v1.yaml",
        "reviews-v2.yaml",
    ]
    assert (tmp_path / "mesh" / "reviews-service.yaml").exists()
    captured = tmp_path / "captured.yml"
    done = _inject(str(PLAIN), "--mode", "capture", "-o", str(captured))
    assert done.returncode == 0, done.stderr
    assert captured.read_text() == GOLDEN["capture"].read_text()
    compose = shutil.which("docker-compose")
    if compose is None:
        if os.environ.get("XDS_TEST_REQUIRE_COMPOSE"):
            pytest.fail("docker-compose is required here (XDS_TEST_REQUIRE_COMPOSE is set)")
        return
    for path in (out, captured):
        checked = subprocess.run(
            [compose, "-f", str(path), "config"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert checked.returncode == 0, (path.name, checked.stderr)


def main() -> int:
    for mode, path in GOLDEN.items():
        path.write_text(inject.dump(_injected(PLAIN.read_text(), mode).compose, mode))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def test_a_service_running_its_own_envoy_gets_its_token_too() -> None:
    text = """services:
  web: {image: web, labels: {app: web}}
  gw:
    image: envoyproxy/envoy:v1.40.0
    environment: {ENVOY_UID: "2000"}
    labels: {sidecar.istio.io/inject: "false", xds-server.io/bootstrap: my-gateway}
"""
    services = _injected(text).compose["services"]
    command = services["xds-identity"]["command"]
    assert "my-gateway:2000" in command and "web:1337" in command
    assert services["gw"]["depends_on"]["xds-identity"]["condition"] == (
        "service_completed_successfully"
    )
    bad = text.replace("my-gateway", "../etc")
    with pytest.raises(inject.InjectError, match="bootstrap"):
        _injected(bad)


def test_the_bootstraps_keep_the_stats_the_mesh_config_asks_for(tmp_path) -> None:
    """defaultConfig.proxyStatsMatcher lives in Envoy's bootstrap: inject reads the mesh
    config in --config-dir and writes it into every sidecar's."""
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    seed = Path(__file__).resolve().parents[1] / "examples" / "seed"
    shutil.copy(seed / "14-mesh-config-tracing.yaml", mesh / "mesh.yaml")
    out = tmp_path / "docker-compose.yml"
    done = _inject(str(PLAIN), "--config-dir", str(mesh), "-o", str(out))
    assert done.returncode == 0, done.stderr
    bootstrap = yaml.safe_load((tmp_path / "envoy-configs" / "productpage.yaml").read_text())
    patterns = bootstrap["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    assert {"safe_regex": {"regex": ".*osconfig.*"}} in patterns
