"""The `xds-server` command line: validate, serve's flags and refusals, help, --version."""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from protos import destination_rule_pb2
from tests.helpers import service_yaml
from xds_server import cli
from xds_server.config.loader import parse_file
from xds_server.config.schema import SchemaError, to_message
from xds_server.demo import ServerLog, demo_workloads, taken_message
from xds_server.launcher import LocalMesh, PortsInUse, free_port

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seed"


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xds_server", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def validate(directory: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_cli("validate", str(directory), cwd=cwd)


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


# ---- --version and help -------------------------------------------------------------------


def test_version_prints_the_distribution_version():
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cli.version() == expected
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"xds-server {expected}"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    top = cli.parser()
    (sub,) = (a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {"": top, **sub.choices}


def test_every_flag_of_every_command_states_its_default():
    missing = []
    for name, command in _subcommands().items():
        formatter = command._get_formatter()
        for action in command._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in text and "(required)" not in text:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"help without a default: {missing}"


def test_serve_help_shows_the_new_flags_with_their_defaults():
    result = run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # undo argparse's wrapping
    for expected in (
        "--xds-port XDS_PORT plaintext xDS (ADS, gRPC) port; off: none",
        "--xds-tls-port XDS_TLS_PORT xDS over TLS",
        "(default: 15012)",
        "(default: <config-dir>/.xds-server)",
        "--restart-grace SECONDS",
        "reconnect (default: 30.0)",
        "(default: 8388608, 8 MiB)",
        "--settle-ms MS",
        "(default: 1000)",
        "--create-config-dir create --config-dir when it does not exist",
    ):
        assert expected in text, expected


def test_demo_flags_check_their_values():
    args = cli.parser().parse_args(["demo", "--subnet", "127.0.11", "--xds-port", "25010"])
    assert (args.subnet, args.xds_port, args.debug_port) == ("127.0.11", 25010, None)
    for bad in (["--subnet", "10.0.0"], ["--subnet", "127.0.300"], ["--xds-port", "70000"]):
        with pytest.raises(SystemExit):
            cli.parser().parse_args(["demo", *bad])


# ---- serve -------------------------------------------------------------------------------


def test_serve_refuses_a_missing_config_dir(tmp_path: Path):
    missing = tmp_path / "mseh"  # a typo of mesh
    result = run_cli("serve", "--config-dir", str(missing), timeout=30)
    assert result.returncode == 2
    assert f"--config-dir {missing}: no such directory" in result.stderr
    assert "--create-config-dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert not missing.exists()


@pytest.fixture
def served(monkeypatch) -> list:
    """Run cmd_serve up to the server: the ServerOptions it would serve are collected."""
    import xds_server.server

    seen: list = []
    monkeypatch.setattr(xds_server.server, "serve", lambda options, stop: seen.append(options))
    monkeypatch.setattr(cli, "_run_until_signal", lambda factory: factory(None) or 0)
    return seen


def test_serve_flags_reach_server_options(tmp_path: Path, served: list):
    status = cli.main(
        [
            "serve",
            "--config-dir",
            str(tmp_path / "new"),
            "--create-config-dir",
            "--xds-port",
            "0",
            "--debug-port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
            "--restart-grace",
            "2.5",
            "--max-file-bytes",
            "1000",
            "--settle-ms",
            "250",
        ]
    )
    assert status == 0
    (options,) = served
    assert (tmp_path / "new").is_dir()  # created, as asked
    assert options.config_dir == tmp_path / "new"
    assert options.state_dir == tmp_path / "state"
    assert options.restart_grace_s == 2.5
    assert options.max_file_bytes == 1000
    assert options.settle_ms == 250
    assert options.create_config_dir is True


def test_serve_defaults_match_server_options(tmp_path: Path, served: list):
    from xds_server.server import ServerOptions

    argv = ["serve", "--config-dir", str(tmp_path), "--xds-port", "0", "--debug-port", "0"]
    assert cli.main(argv) == 0
    defaults = ServerOptions(config_dir=tmp_path)
    (options,) = served
    assert options.state_dir is None  # the server puts it under the config directory
    for name in ("restart_grace_s", "max_file_bytes", "settle_ms", "create_config_dir"):
        assert getattr(options, name) == getattr(defaults, name), name
    argv = ["serve", "--config-dir", str(tmp_path), "--debug-port", "0"]
    assert cli.main([*argv, "--xds-port", "0", "--xds-tls-port", "0"]) == 0
    for name in ("xds_tls_names", "jwks_refresh_s", "workload_key"):
        assert getattr(options, name) == getattr(defaults, name), name


def test_serve_wants_one_xds_port(tmp_path: Path, served: list, capsys):
    argv = ["serve", "--config-dir", str(tmp_path), "--xds-port", "off", "--xds-tls-port", "off"]
    assert cli.main(argv) == 2 and not served
    assert "both off" in capsys.readouterr().err


def test_serve_names_a_taken_port(tmp_path: Path, served: list, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = cli.main(
            ["serve", "--config-dir", str(tmp_path), "--xds-port", "0", "--debug-port", str(port)]
        )
    assert status == 2 and not served
    assert f"127.0.0.1:{port} (--debug-port) is in use" in capsys.readouterr().err


# ---- the demo's pieces that need no processes ----------------------------------------------


def test_launcher_keeps_server_state_in_its_work_dir(tmp_path: Path):
    mesh = LocalMesh(tmp_path / "config", [], tmp_path / "work", xds_port=1, debug_port=2)
    command = mesh.server_command()
    assert command[command.index("--state-dir") + 1] == str(tmp_path / "work" / "state")


def test_a_taken_subnet_is_named_with_the_flag_to_use(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        mesh = LocalMesh(
            tmp_path,
            demo_workloads(),
            tmp_path,
            xds_port=busy.getsockname()[1],
            debug_port=free_port(),
            subnet="127.0.10",
        )
        taken = [t for t in mesh.taken() if t[0] != "subnet"]  # a demo may be running
        assert taken == [("xds_port", f"127.0.0.1:{mesh.xds_port}", "xDS")]
        message = taken_message(PortsInUse(taken), mesh, debug_port_set=False)
    assert message.startswith(f"error: 127.0.0.1:{mesh.xds_port} (xDS) is in use")
    assert "--xds-port " in message and "\n" not in message
    subnet = taken_message(
        PortsInUse([("subnet", "127.0.10.1:15000", "sleep Envoy admin")] * 3), mesh, False
    )
    assert "127.0.10.1:15000 (sleep Envoy admin) and 2 more on 127.0.10.*" in subnet
    assert "--subnet 127." in subnet


def test_server_log_shows_warnings_and_errors_only(tmp_path: Path):
    log = tmp_path / "xds-server.out"
    out = io.StringIO()
    follower = ServerLog(log, out=out, interval=0.01, max_continuation=2).start()
    log.write_text(
        "2026-01-01 10:00:00,001 INFO xds_server.server: xDS on 127.0.0.1:15010\n"
        "2026-01-01 10:00:01,002 ERROR xds_server.config.watcher: "
        "mesh/x.yaml:9: error: VirtualService default/x: spec.hosts: required\n"
        "2026-01-01 10:00:01,003 WARNING xds_server.ads: proxy a NACKed\n"
        "2026-01-01 10:00:02,004 ERROR asyncio: Task exception was never retrieved\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1\n'
        "ValueError: boom\n"
        "2026-01-01 10:00:03,005 INFO xds_server.ads: proxy b connected\n"
        "not after a shown record\n"
        "a line still being written"
    )
    follower.stop()
    assert out.getvalue().splitlines() == [
        "xds-server: mesh/x.yaml:9: error: VirtualService default/x: spec.hosts: required",
        "xds-server: warning: proxy a NACKed",
        "xds-server: error: Task exception was never retrieved",
        "xds-server: Traceback (most recent call last):",
        'xds-server:   File "x.py", line 1',
        f"xds-server:   ... (more in {log})",
    ]


# ---- DestinationRule tls: credentialName is a real Istio field, not implemented yet --------


@pytest.mark.parametrize(
    "spec, path",
    [
        (
            {"trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "c"}}},
            ("trafficPolicy", "tls", "credentialName"),
        ),
        (
            {
                "trafficPolicy": {
                    "portLevelSettings": [{"port": {"number": 80}, "tls": {"credentialName": "c"}}]
                }
            },
            ("trafficPolicy", "portLevelSettings", 0, "tls", "credentialName"),
        ),
        (
            {"subsets": [{"name": "v1", "trafficPolicy": {"tls": {"credentialName": "c"}}}]},
            ("subsets", 0, "trafficPolicy", "tls", "credentialName"),
        ),
    ],
)
def test_destination_rule_credential_name_is_not_supported_yet(spec: dict, path: tuple):
    with pytest.raises(SchemaError) as caught:
        to_message(destination_rule_pb2.DestinationRule, {"host": "reviews", **spec})
    assert caught.value.path == path
    assert "not supported yet" in str(caught.value)
    assert "unknown field" not in str(caught.value)


def test_destination_rule_tls_error_points_at_its_line():
    text = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    tls:
      mode: MUTUAL
      caCertificates: /etc/certs/ca.pem
"""
    issues = parse_file("dr.yaml", text).issues
    assert [(i.severity, i.field) for i in issues] == [
        ("error", "spec.trafficPolicy.tls.clientCertificate"),
        ("error", "spec.trafficPolicy.tls.privateKey"),
    ]
    assert "required with mode MUTUAL" in issues[0].message and issues[0].line >= 7


def test_bootstrap_sends_a_token_only_over_tls(tmp_path: Path, capsys):
    argv = ["bootstrap", "--node-id", "a", "--token", "xds1.x.y", "-o", str(tmp_path / "b.yaml")]
    assert cli.main(argv) == 2
    assert "--token needs --xds-root-cert" in capsys.readouterr().err
    root = str(tmp_path / "root.pem")
    assert cli.main([*argv, "--xds-root-cert", root]) == 0
    text = (tmp_path / "b.yaml").read_text()
    assert "Bearer xds1.x.y" in text and root in text and "xds-server" in text
